"""Fine-tuning the bundled synthetic model on a few real faces, against the same extra training
on synthetic faces and against the same run from a random start.

Run: python benchmarks/real_faces.py --fetch DIR          (once: the 71 real faces)
     python benchmarks/finetune_real.py --photos DIR --out RUNS [--folds 3] [--fold K]
         [--conditions finetuned,unkept,synthetic,scratch,control] [--scratch-folds 1] [--seed S]
         [--keep-weight W] [--posed POSED_DIR]

The 71 faces (5 points each) are written as an MTFL list and split into ``--folds`` folds by
photo (the faces of one photo stay together; split seed 47). For each fold, each condition trains
on the other folds' faces with ``configs/finetune_bundled.yaml`` (150 stage-2 rounds) and is
scored on the fold's faces with ``facemtl score mtfl`` (from the labels' squares and through the
Haar detector):

- ``finetuned``: the config as shipped (``model.init: bundled``; the real faces are the landmark
  source, synthetic faces keep parsing and emotion trained, and ``data.2.keep`` keeps the bundled
  model's emotion predictions on the real training faces, :mod:`facemtl.engine.keep`);
  ``--keep-weight W`` trains it at another keep weight;
- ``unkept``: the shipped config without ``data.2.keep`` (the landmark source trains the shared
  layers freely);
- ``synthetic``: the unkept config with the landmark source synthetic (the bundled recipe's
  snapshot faces) instead of the real faces: what the extra training alone gives;
- ``scratch``: the unkept config from a random initialisation (the default narrow iFAN; keep needs a
  starting model), on the first ``--scratch-folds`` folds only;
- ``control``: a plain network fine-tuned the same way: the ResNet18 landmark regressor of
  ``configs/control_landmarks_resnet18.yaml`` at the shipped config's input size (128 px), trained on
  synthetic faces once per seed (run ``control-synthetic``, scored beside the bundled model: the
  bundled model's landmark faces and number of landmark updates, without its random convolutions),
  then on the real faces with as many landmark updates as the shipped config makes (its rounds x
  the bundled model's refinement iterations), its learning rate schedule and its real source
  (without keep): whether the landmark gain is iFAN's or any network's.

``--posed DIR`` (the folder ``posed_expressions.py --fetch`` filled) also scores each model's
emotion on the 35 posed faces (``facemtl score emotion-folder``), which no condition trains on:
what fine-tuning the landmarks costs the emotions. ``--seed S`` trains with ``--set seed=S``.

Beside them the bundled model as it is and the mean shape (``facemtl score``'s baseline). Every
model is scored with ``--refiner none``: the face models' own points, the bundled one's too (its
point refiner is not trained with them; it moves the bundled model's points, README; runs started
from the bundled model carry a copy of it, which ``facemtl score --refiner DIR`` applies). Runs
and scores already in RUNS are reused, so an interrupted benchmark continues; runs at another
seed or keep weight are named apart (``finetuned-w0.3-seed1-0``: condition, keep weight, seed,
fold), and one benchmark per fold (``--fold K``) may run beside another into the same RUNS. Each
run takes minutes on 2 cores: without keep 7-13 (2026-12-06); on 2026-12-07 the shipped config
with keep 26, the control's synthetic training 16 and each of its fine-tunings 4. The commands are
printed as they run: each is a README command.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from facemtl.config import load_config
from facemtl.models.checkpoint import read_model_info

from real_faces import mtfl_layout, point_offsets

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "finetune_bundled.yaml"
BUNDLED = REPO / "src" / "facemtl" / "assets" / "default_model"
CONTROL_CONFIG = REPO / "configs" / "control_landmarks_resnet18.yaml"
CONDITIONS = ("finetuned", "unkept", "synthetic", "scratch", "control")
SYNTHETIC_LANDMARKS = {"name": "synth", "tasks": ["landmarks"], "style": "snapshot", "batch_size": 16,
                       "n_train": 768, "n_test": 64, "seed": 1, "random_conv": 0.5}


def write_folds(layout: Path, out: Path, folds: int) -> list[Path]:
    """``out/fold<k>``: training.txt (the other folds) and testing.txt (fold k), by photo."""
    lines = [line for line in (layout / "testing.txt").read_text().splitlines(keepends=True) if line.strip()]
    photos = sorted({line.split()[0] for line in lines})
    random.Random(47).shuffle(photos)
    fold_of = {p: i % folds for i, p in enumerate(photos)}
    dirs = []
    for k in range(folds):
        d = out / f"fold{k}"
        d.mkdir(parents=True, exist_ok=True)
        for entry in layout.iterdir():  # the photos, shared
            if entry.is_dir() and not (d / entry.name).exists():
                (d / entry.name).symlink_to(entry.resolve())
        for name, wanted in (("testing.txt", True), ("training.txt", False)):
            text = "".join(x for x in lines if (fold_of[x.split()[0]] == k) == wanted)
            if not (d / name).is_file() or (d / name).read_text() != text:  # never under a running benchmark's reader
                (d / name).write_text(text)
        dirs.append(d)
    return dirs


def finetuned_keep(keep_weight: float | None = None) -> dict[str, float]:
    """The finetuned condition's ``data.2.keep``: the shipped config's, every weight ``keep_weight`` if given."""
    keep = yaml.safe_load(CONFIG.read_text())["data"][2].get("keep") or {}
    return {t: w if keep_weight is None else keep_weight for t, w in keep.items()}


def write_configs(out: Path, keep: dict[str, float]) -> dict[str, Path]:
    """Each condition's config, the finetuned one keeping ``keep`` (:func:`finetuned_keep`), named as
    its runs are (:func:`run_name`), so that concurrent benchmarks at other keep weights into the
    same folder do not overwrite each other's."""
    from facemtl.models.ifan import DEFAULT_RUN_KWARGS

    shipped = yaml.safe_load(CONFIG.read_text())
    real = shipped["data"][2]
    finetuned = dict(shipped, data=shipped["data"][:2] + [dict(real, keep=keep)])
    unkept = dict(shipped, data=shipped["data"][:2] + [{k: v for k, v in real.items() if k != "keep"}])
    synthetic = dict(unkept, data=shipped["data"][:2] + [SYNTHETIC_LANDMARKS])
    scratch = dict(unkept, model={"name": "ifan", "kwargs": dict(DEFAULT_RUN_KWARGS)})
    control_synthetic, control = control_configs(unkept)
    paths = {}
    for name, cfg in (("finetuned", finetuned), ("unkept", unkept), ("synthetic", synthetic), ("scratch", scratch),
                      ("control-synthetic", control_synthetic), ("control", control)):
        paths[name] = out / f"{run_name(name, 0, keep)}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def control_configs(unkept: dict) -> tuple[dict, dict]:
    """The control's two configs: its synthetic training (``configs/control_landmarks_resnet18.yaml``
    at the shipped config's input size: the two networks see the same pixels) and its fine-tuning
    (``model.init``, the synthetic run, is set per seed at training): the real source of ``unkept``
    (the shipped config without keep), one landmark update per step for as many steps as the shipped
    run makes landmark updates (Algorithm 1's plan for one task over the shipped rounds at the
    bundled model's refinement iterations), the shipped learning rates, the warm-up scaled alike."""
    from facemtl.engine.hybrid import HybridPlan

    synthetic = dict(yaml.safe_load(CONTROL_CONFIG.read_text()), input_size=unkept["input_size"])
    sched = load_config(CONFIG, ["data.2.root=unused"]).schedule  # the shipped values, defaults filled in
    iterations = read_model_info(BUNDLED)["model"]["config"]["iterations"]
    updates = HybridPlan((1,), 0, sched.epochs, sched.rounds, iterations, sched.pretrain_lr, sched.lr,
                         sched.lr_end, sched.decay).total
    return synthetic, {**synthetic, "data": [unkept["data"][2]], "seed": unkept.get("seed", 0),
                       "schedule": {"mode": "joint", "rounds": updates, "lr": sched.lr, "lr_end": sched.lr_end,
                                    "decay": sched.decay, "warmup": sched.warmup * updates // sched.rounds}}


def run(cmd: list[str]) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")


def offsets(faces: list[dict]) -> np.ndarray:
    """Mean signed error per point over the scored faces, in the face's frame (along the eye line,
    down the face), % IOD: :func:`real_faces.point_offsets` averaged."""
    return np.mean([point_offsets(f["predicted_points"], f["points"]) for f in faces if f.get("nme") is not None], 0)


def run_name(condition: str, seed: int, keep: dict[str, float]) -> str:
    """A condition's name with what its runs were trained with: a rerun with another seed or keep
    weight (or after the shipped keep changed) into the same RUNS trains anew instead of reusing runs
    trained otherwise. ``keep`` is the finetuned condition's (task: weight)."""
    weights = sorted(set(keep.values())) if condition == "finetuned" else []
    name = condition + "".join(f"-w{w:g}" for w in weights)
    return name + (f"-seed{seed}" if seed else "")


def posed_text(emotion: dict) -> str:
    n, base = emotion["faces"], emotion["baseline"]
    return (f"{round(emotion['accuracy'] * n)} of {n} (found {emotion['found']}; always {base['label']}: "
            f"{round(base['accuracy'] * n)})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, required=True, help="the folder real_faces.py --fetch filled")
    ap.add_argument("--out", type=Path, required=True, help="runs, folds and scores go here (reused when present)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--fold", type=int, help="train and score this fold only")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--scratch-folds", type=int, default=1, help="folds the scratch condition runs on (default 1)")
    ap.add_argument("--keep-weight", type=float,
                    help="the finetuned condition's keep weight (default: the shipped config's, "
                         + ", ".join(f"{t} {w:g}" for t, w in finetuned_keep().items()) + ")")
    ap.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0, the shipped config's)")
    ap.add_argument("--posed", type=Path,
                    help="also score emotion on the posed faces (the folder posed_expressions.py --fetch filled)")
    args = ap.parse_args(argv)
    conditions = args.conditions.split(",")
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        ap.error(f"unknown condition(s) {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    layout = args.out / "mtfl"
    posed = args.out / "posed"
    keep = finetuned_keep(args.keep_weight)
    with open(args.out / ".prepare.lock", "w") as lock:  # one benchmark per fold may share RUNS
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (layout / "testing.txt").is_file():
            print(mtfl_layout(args.photos, layout))
        folds = write_folds(layout, args.out, args.folds)
        configs = write_configs(args.out, keep)
        if args.posed is not None and not posed.is_dir():
            script = Path(__file__).with_name("posed_expressions.py")
            run([sys.executable, script, "--photos", args.posed, "--layout", posed])
    facemtl = [sys.executable, "-m", "facemtl"]
    baselines = {"bundled": BUNDLED}
    if "control" in conditions:  # the control's synthetic training, once per seed for every fold
        base = run_name("control-synthetic", args.seed, keep)
        baselines[base] = args.out / base
        with open(args.out / f".{base}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (baselines[base] / "metrics.json").is_file():
                run(facemtl + ["train", configs["control-synthetic"], "--out", baselines[base],
                               "--set", f"seed={args.seed}", "--quiet"])
    table: dict[tuple[str, str], list[dict]] = {}
    for k, fold in enumerate(folds):
        if args.fold is not None and k != args.fold:
            continue
        models = dict(baselines)
        for c in conditions:
            if c == "scratch" and k >= args.scratch_folds:
                continue
            run_dir = args.out / f"{run_name(c, args.seed, keep)}-{k}"
            if not (run_dir / "metrics.json").is_file():
                source = "data.0" if c == "control" else "data.2"  # the real source
                init = ["--set", f"model.init={baselines[base]}"] if c == "control" else []
                run(facemtl + ["train", configs[c], "--out", run_dir, "--set", f"{source}.root={fold}",
                               "--set", f"seed={args.seed}", *init, "--quiet"])
            models[run_name(c, args.seed, keep)] = run_dir
        for name, model in models.items():
            for crops in ("labels", "detector"):
                scores = args.out / "scores" / f"{name}-{k}-{crops}.json"
                if not scores.is_file():
                    scores.parent.mkdir(exist_ok=True)
                    run(facemtl + ["score", "mtfl", fold, "--checkpoint", model, "--crops", crops, "--refiner", "none",
                                 "--json", scores])
                table.setdefault((name, crops), []).append(json.loads(scores.read_text()))
            reads_emotion = any(t["name"] == "emotion" for t in read_model_info(model)["tasks"])
            if args.posed is not None and reads_emotion:
                scores = args.out / "scores" / f"{name}-{k}-posed.json"
                if not scores.is_file():
                    run(facemtl + ["score", "emotion-folder", posed, "--checkpoint", model, "--json", scores])
                table.setdefault((name, "posed"), []).append(json.loads(scores.read_text()))
    names = list(baselines) + [run_name(c, args.seed, keep) for c in conditions]
    width = max(map(len, names + ["mean shape"])) + 1
    for crops in ("labels", "detector"):
        where = "the labels' squares" if crops == "labels" else "the Haar detector"
        print(f"\nfrom {where}: landmark NME % per fold (found / faces); pooled mean / median over the faces "
              "found; failures > 10%")
        for name in names:
            results = table.get((name, crops))
            if not results:
                continue
            faces = [f for r in results for f in r["faces"] if f.get("nme") is not None]
            nmes = [f["nme"] for f in faces]
            marks = [r["summary"]["landmarks"] for r in results]
            folds_text = " | ".join(f"{100 * m['mean']:.2f} ({m['found']}/{m['faces']})" for m in marks)
            print(f"  {name:{width}s} {folds_text}; pooled {100 * statistics.mean(nmes):.2f} / "
                  f"{100 * statistics.median(nmes):.2f} over {len(nmes)}; failures "
                  f"{100 * sum(x > 0.1 for x in nmes) / len(nmes):.1f}%")
            if crops == "labels":
                print(" " * (width + 3) + "mean offset per point (along, down; % IOD): "
                      + " ".join(f"{a:+.1f},{b:+.1f}" for a, b in offsets(faces)))
        base = [r["summary"]["landmarks"]["baseline"]["mean"] for r in table[("bundled", crops)]]
        print("  " + "mean shape".ljust(width + 1) + " | ".join(f"{100 * b:.2f}" for b in base))
    if args.posed is not None:
        print("\nposed expressions: faces read right by each fold's model")
        for name in names:
            if results := table.get((name, "posed")):
                print(f"  {name:{width}s} " + " | ".join(posed_text(r["summary"]["emotion"]) for r in results))


if __name__ == "__main__":
    main()
