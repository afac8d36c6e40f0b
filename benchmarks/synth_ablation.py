"""Which renderer change buys what: the default run trained with every realism feature, and
with one group of features left out at a time, each scored on held-out synthetic domains and
on the astronaut photograph (issue "Synthetic to real": transfer, not looks, is the evidence).

    python benchmarks/synth_ablation.py --out runs/ablation [--scale 0.5] [--groups all]

Each run is ``facemtl train`` of the default config with every source's ``n_train`` scaled by
``--scale`` (0.5: half the updates, about 4 minutes on 2 idle cores) and
``data.N.features`` = all features minus the group; finished runs in ``--out`` are reused.
Then prints, per run: landmarks NME % / parsing F1 % / emotion accuracy % on its own test sets
(the training styles, full renderer), on the held-out ``wild`` and ``webcam`` styles drawn by
the full and by the plain renderer (``benchmarks/synth_transfer.py``), and the astronaut's
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
    ap.add_argument("--scale", type=float, default=0.5, help="share of each source's training faces (default 0.5)")
    ap.add_argument("--groups", default="all", help=f"comma-separated among {', '.join(GROUPS)} (default all)")
    ap.add_argument("--n", type=int, default=200, help="held-out test faces per (renderer, style)")
    args = ap.parse_args(argv)
    groups = list(GROUPS) if args.groups == "all" else args.groups.split(",")
    here = Path(__file__).resolve().parent
    for g in groups:
        run = args.out / f"without_{g}"
        if (run / "metrics.json").exists():
            continue
        cmd = [sys.executable, "-m", "facemtl", "train", "--out", str(run), "--quiet"]
        for o in overrides(g, args.scale):
            cmd += ["--set", o]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    for g in groups:
        run = args.out / f"without_{g}"
        last = json.loads((run / "metrics.json").read_text())["iterations"]
        m = last[str(max(map(int, last)))]
        print(f"without {g:14s} own test sets: NME {m['landmarks']['nme']:.2f}%, F1 {m['parsing']['overall']:.1f}%, "
              f"emotion {m['emotion']['accuracy']:.1f}%", flush=True)
    runs = [str(args.out / f"without_{g}") for g in groups]
    subprocess.run([sys.executable, str(here / "synth_transfer.py"), *runs, "--styles", "wild,webcam", "--n", str(args.n)],
                   check=True)
    subprocess.run([sys.executable, str(here / "real_photo.py"), *runs], check=True)


if __name__ == "__main__":
    main()
