"""Which renderer change buys what: the default run trained with every realism feature, and
with one group of features left out at a time, each scored on held-out synthetic domains and
on the astronaut photograph (issue "Synthetic to real": transfer, not looks, is the evidence).

    python benchmarks/synth_ablation.py --out runs/ablation [--scale 1] [--groups all] [--seeds 0,1,2]

Each run is ``facemtl train`` of the default config with training seed ``seed``, every source's
``n_train`` scaled by ``--scale`` (1: the default run, about 5.5 minutes on 2 idle cores) and
``data.N.features`` = all features minus the group (``everything``: the plain renderer); runs
are ``--out/without_GROUP_seedS``, finished ones are reused and so are their scores
(``ablation_scores.json`` in each run), interrupted ones resumed. Prints one row per run, then
per group the mean over the seeds (and the spread, min..max): landmarks NME % / parsing F1 % /
emotion accuracy % on its own test sets (training styles, full renderer), landmark NME on the held-out ``webcam`` and ``wild``
styles drawn by the full renderer (``benchmarks/synth_transfer.py``), and the astronaut's
5-point NME and emotion (``benchmarks/real_photo.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

GROUPS = {
    "none": (),  # every feature on: the reference
    "shading_skin": ("smooth_shading", "skin_texture", "specular"),
    "face_details": ("eyes", "mouth_interior", "nostrils", "makeup"),
    "hair_extras": ("hair_texture", "facial_hair", "ears", "clothing"),
    "scene_camera": ("lighting", "camera", "backgrounds"),
    "expressions": ("expressions",),
    "everything": None,  # the plain renderer (features: [])
}


def overrides(group: str, scale: float) -> list[str]:
    from facemtl.config import TrainConfig
    from facemtl.data.synth_look import FEATURES

    removed = GROUPS[group]
    keep = [] if removed is None else [f for f in FEATURES if f not in removed]
    out = []
    for i, src in enumerate(TrainConfig().data):
        out.append(f"data.{i}.n_train={max(1, round(src.n_train * scale))}")
        if group != "none":
            out.append(f"data.{i}.features=[{', '.join(keep)}]")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs (finished ones are reused)")
    ap.add_argument("--scale", type=float, default=1.0, help="share of each source's training faces (default 1)")
    ap.add_argument("--groups", default="all", help=f"comma-separated among {', '.join(GROUPS)} (default all)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    ap.add_argument("--n", type=int, default=200, help="held-out test faces per style")
    args = ap.parse_args(argv)
    groups = list(GROUPS) if args.groups == "all" else args.groups.split(",")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {', '.join(unknown)}; expected among {', '.join(GROUPS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rows: dict[str, list[dict]] = {}
    for g in groups:
        for seed in seeds:
            run = args.out / f"without_{g}_seed{seed}"
            if not (run / "metrics.json").exists():
                cmd = [sys.executable, "-m", "facemtl", "train", "--out", str(run), "--quiet", "--set", f"seed={seed}"]
                if (run / "train_state.json").exists():  # an interrupted run continues where it stopped
                    cmd.append("--resume")
                for o in overrides(g, args.scale):
                    cmd += ["--set", o]
                print(" ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            row = scores(run, args.n)
            rows.setdefault(g, []).append(row)
            print(f"{run.name:34s} " + "  ".join(f"{k} {row[k]}" if isinstance(row[k], str) else f"{k} {row[k]:.2f}"
                                                 for k in COLUMNS), flush=True)
    print(f"\nmean over seeds {seeds} (min..max)")
    for g, group_rows in rows.items():
        cells = []
        for k in COLUMNS:
            values = [r[k] for r in group_rows]
            if isinstance(values[0], str):
                cells.append(f"{k} {'/'.join(values)}")
            else:
                cells.append(f"{k} {sum(values) / len(values):.2f} ({min(values):.2f}..{max(values):.2f})")
        print(f"without {g:13s} " + "  ".join(cells), flush=True)


# own test sets, held-out styles (full renderer), the astronaut photo
COLUMNS = ("nme", "f1", "emotion", "webcam_nme", "wild_nme", "photo_nme", "photo_emotion")


def scores(run: Path, n: int) -> dict:
    """One run's :data:`COLUMNS`, computed once and kept in the run folder."""
    saved = run / "ablation_scores.json"
    if saved.exists():
        kept = json.loads(saved.read_text())
        if kept.get("n") == n:
            return kept
    from real_photo import astronaut
    from synth_transfer import score

    from facemtl.models.checkpoint import load_model
    from facemtl.models.fc_densenet import use_speed_paths

    last = json.loads((run / "metrics.json").read_text())["iterations"]
    m = last[str(max(map(int, last)))]
    out = {"n": n, "nme": m["landmarks"]["nme"], "f1": m["parsing"]["overall"], "emotion": m["emotion"]["accuracy"]}
    model, info = load_model(run)
    use_speed_paths(model)
    for style in ("webcam", "wild"):
        out[f"{style}_nme"] = score(model, info, style, "full", n)[0]["landmarks"]["nme"]
    photo = astronaut(run)
    out["photo_nme"] = photo.get("nme", float("nan"))
    out["photo_emotion"] = photo.get("emotion", "-")
    saved.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
