"""Copy a trained run's model into the package as the bundled default model.

    OMP_NUM_THREADS=1 facemtl train --out runs/bundled --set input_size=128 --set data.1.style=studio \
        --set data.0.random_conv=0.5 --set data.1.random_conv=0.5 --set data.2.random_conv=0.5 \
        --set 'data.1.expression=[1.2,2.5]' --set seed=12
    facemtl train-refiner --out runs/refiner
    python tools/bundle_model.py runs/bundled --refiner runs/refiner

(the default run's config at 128 px, its emotion source drawn in the well-lit "studio" style with
stronger expressions, random-convolution restyling on every source, one thread; seed 12, chosen
among the trainings of this recipe on our real faces (docs/evidence.md, "The bundled model", says
how and why); the same command gives the same weights bit for bit only on the same platform
(README)) writes
``src/facemtl/assets/default_model/{model.safetensors,model.json,config.json}`` (config.json: the
run's training config, which ``facemtl synth preview --source N --config bundled`` draws from); model.json gains a
``provenance`` entry (the command that trained it, the commit and platform it was trained on,
the date, the run's test scores) and a ``stored`` entry: the weights are bundled in float16 (half the
bytes; the trained float32 file's SHA-256 kept there, which a retraining reproduces; ``--float32``
keeps them as trained),
so that ``facemtl.load()`` users can see where the weights come from; ``--refiner DIR`` copies a point
refiner (``refiner.safetensors`` + ``refiner.json`` and its further stages' ``refiner.stage2.*``, each
with its provenance inside) beside it, which
``facemtl.load()`` and ``facemtl predict`` then use by default (:mod:`facemtl.models.refiner`). Several runs
(``python tools/bundle_model.py RUN RUN ...``) are bundled as an ensemble: ``ensemble.json`` and
one folder per member (``seed7``, ...), each with its own model.json and provenance
(:func:`facemtl.models.checkpoint.ensemble_members`; the predictor averages their outputs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

from facemtl.engine.loop import source_commit
from facemtl.files import half_precision, json_bytes, read_tensors, sha256_hex, tensors_bytes
from facemtl.models.checkpoint import ENSEMBLE_FORMAT, ENSEMBLE_JSON, MODEL_JSON, MODEL_WEIGHTS
from facemtl.models.refiner import has_refiner, load_refiner, refiner_files

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "facemtl" / "assets" / "default_model"
# {seed}: each run's own seed (its config.json)
COMMAND = ("OMP_NUM_THREADS=1 facemtl train --out runs/bundled --set input_size=128 --set data.1.style=studio "
           "--set data.0.random_conv=0.5 --set data.1.random_conv=0.5 --set data.2.random_conv=0.5 "
           "--set 'data.1.expression=[1.2,2.5]' --set seed={seed}")
RUN_CONFIG = "config.json"  # the run's resolved training config
TRAINED_ON = ("synthetic faces only (the built-in default config's three synthetic sources, "
              "with the command's --set changes)")


def with_provenance(run: Path, command: str) -> dict:
    """The run's model.json with a ``provenance`` entry: the command, the commit and platform it
    was trained on, today's date, its last refinement iteration's synthetic test scores."""
    info = json.loads((run / "model.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())["iterations"]
    last = metrics[str(max(map(int, metrics)))]
    # the commit the run recorded when it trained; runs from before it did: the checkout's HEAD now
    commit = info.pop("source_commit", None)
    recorded_by = "the training run"
    if commit is None:
        commit, recorded_by = source_commit(), "the bundle tool (the run did not record one)"
    info["provenance"] = {
        "trained_on": TRAINED_ON,
        "command": command,
        "commit": commit,
        "commit_recorded_by": recorded_by,
        # library versions, processor and kernel build of the training run (runs from before
        # 2026-12-04 did not record them): another platform rounds differently
        "platform": info.pop("platform", None),
        **({"platform_history": info.pop("platform_history")} if "platform_history" in info else {}),
        "bundled": datetime.date.today().isoformat(),
        "synthetic_test_scores": {
            "landmarks_nme_percent": round(last["landmarks"]["nme"], 2),
            "parsing_overall_f1_percent": round(last["parsing"]["overall"], 2),
            "emotion_accuracy_percent": round(last["emotion"]["accuracy"], 2),
        },
    }
    return info


def run_seed(run: Path):
    config = run / "config.json"
    return json.loads(config.read_text()).get("seed") if config.is_file() else None


def with_seed(command: str, seed) -> str:
    """``command`` with ``{seed}`` replaced (not str.format: a command may hold other braces)."""
    return command.replace("{seed}", str(seed))


def clear(dest: Path) -> None:
    """Remove the bundled model's files (a single model's, or an ensemble's and its members')."""
    manifest = dest / ENSEMBLE_JSON
    if manifest.is_file():
        for name in json.loads(manifest.read_text()).get("members", []):
            shutil.rmtree(dest / name, ignore_errors=True)
        manifest.unlink()
    for name in (MODEL_WEIGHTS, MODEL_JSON, RUN_CONFIG):
        (dest / name).unlink(missing_ok=True)
    if has_refiner(dest):
        for pair in refiner_files(dest):
            for path in pair:
                path.unlink(missing_ok=True)


def stored(weights: Path, info: dict, half: bool) -> tuple[bytes, dict]:
    """The bytes to bundle for ``weights`` and its description ``info`` with their hash: as trained, or
    (``half``) in float16 (:func:`facemtl.files.half_precision`), the description then saying so and
    keeping the trained file's hash (``stored``), which a retraining reproduces."""
    data = weights.read_bytes()
    if not half:
        return data, info
    halved = tensors_bytes(half_precision(read_tensors(weights, "weights to bundle")))
    note = {"dtype": "float16", "trained_weights_sha256": sha256_hex(data),
            "how": "the trained float32 weights rounded to float16 by tools/bundle_model.py (BatchNorm running "
                   "statistics kept float32); loaded into float32 models"}
    return halved, {**info, "weights_sha256": sha256_hex(halved), "stored": note}


def write_model(run: Path, dest: Path, command: str, half: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    weights, info = stored(run / MODEL_WEIGHTS, with_provenance(run, command), half)
    (dest / MODEL_WEIGHTS).write_bytes(weights)
    if (run / RUN_CONFIG).is_file():  # the whole training config, for `facemtl synth --config bundled`
        shutil.copyfile(run / RUN_CONFIG, dest / RUN_CONFIG)
    (dest / MODEL_JSON).write_text(json.dumps(info, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                    help="finished run folders (model.safetensors, model.json, metrics.json); several: an "
                         "ensemble (facemtl.models.checkpoint.ensemble_members), one member per run")
    ap.add_argument("--command", action="append",
                    help="the command that trained a run, recorded in its model.json: once, or once per run in "
                         "order ({seed}: the run's seed; default: COMMAND)")
    ap.add_argument("--refiner", type=Path, metavar="DIR",
                    help="a point refiner's folder (facemtl train-refiner) to bundle beside the model "
                         "(without it, the bundled model has none)")
    ap.add_argument("--float32", action="store_true",
                    help="store the weights as trained (float32, twice the bytes); default: float16, which "
                         "moves the real-face figures by at most a few hundredths (docs/evidence.md)")
    args = ap.parse_args(argv)
    half = not args.float32
    if args.refiner is not None:
        load_refiner(args.refiner)  # a readable refiner, or one clear error before anything is replaced
    commands = args.command or [COMMAND]
    if len(commands) not in (1, len(args.runs)):
        ap.error(f"give --command once or once per run ({len(args.runs)}), not {len(commands)} times")
    seeds = [run_seed(run) for run in args.runs]
    commands = [with_seed(c, seed) for c, seed in zip(commands * len(args.runs), seeds)]
    clear(DEST)
    if len(args.runs) == 1:
        write_model(args.runs[0], DEST, commands[0], half)
        size = (DEST / MODEL_WEIGHTS).stat().st_size
    else:
        names = [f"seed{seed}" for seed in seeds]
        if None in seeds or len(set(seeds)) != len(seeds):  # members named by their seeds when they can be
            names = [f"member{i + 1}" for i in range(len(args.runs))]
        for run, name, command in zip(args.runs, names, commands):
            write_model(run, DEST / name, command, half)
        (DEST / ENSEMBLE_JSON).write_text(json.dumps({
            "format": ENSEMBLE_FORMAT, "members": names,
            "provenance": {"trained_on": TRAINED_ON, "bundled": datetime.date.today().isoformat(),
                           "combined": "each task's outputs averaged over the members at every crop "
                                       "(points: their mean; classes: the mean of the members' probabilities)"},
        }, indent=1) + "\n")
        size = sum((DEST / name / MODEL_WEIGHTS).stat().st_size for name in names)
    if args.refiner is not None:
        for weights, meta in refiner_files(args.refiner):
            data, info = stored(weights, json.loads(meta.read_text()), half)
            (DEST / weights.name).write_bytes(data)
            (DEST / meta.name).write_bytes(json_bytes(info))
            size += len(data)
    print(f"bundled {', '.join(map(str, args.runs + ([args.refiner] if args.refiner else [])))} -> {DEST} "
          f"({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
