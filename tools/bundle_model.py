"""Copy a trained run's model into the package as the bundled default model.

    facemtl train --out runs/bundled --set input_size=128 --set data.1.style=studio \
        --set data.0.random_conv=0.5 --set data.1.random_conv=0.5 --set data.2.random_conv=0.5 --set seed=1
    python tools/bundle_model.py runs/bundled

(the default run's config at 128 px, its emotion source drawn in the well-lit "studio" style,
random-convolution restyling on every source, seed 1: the lowest seed whose data the repository
still draws, seed 0's having been trained before the restyling's draws were last changed; the
same command gives the same weights bit for bit only on the same platform (README);
docs/evidence.md, "The bundled model",
says why) writes
``src/facemtl/assets/default_model/{model.safetensors,model.json}``; model.json gains a
``provenance`` entry (the command that trained it, the commit and platform it was trained on,
the date, the run's test scores)
so that ``facemtl.load()`` users can see where the weights come from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

from facemtl.engine.loop import source_commit

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "facemtl" / "assets" / "default_model"
COMMAND = ("facemtl train --out runs/bundled --set input_size=128 --set data.1.style=studio "
           "--set data.0.random_conv=0.5 --set data.1.random_conv=0.5 --set data.2.random_conv=0.5 --set seed=1")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder (model.safetensors, model.json, metrics.json)")
    ap.add_argument("--command", default=COMMAND,
                    help="the command that trained the run, recorded in model.json")
    args = ap.parse_args(argv)
    info = json.loads((args.run / "model.json").read_text())
    metrics = json.loads((args.run / "metrics.json").read_text())["iterations"]
    last = metrics[str(max(map(int, metrics)))]
    # the commit the run recorded when it trained; runs from before it did: the checkout's HEAD now
    commit = info.pop("source_commit", None)
    recorded_by = "the training run"
    if commit is None:
        commit, recorded_by = source_commit(), "the bundle tool (the run did not record one)"
    info["provenance"] = {
        "trained_on": "synthetic faces only (the built-in default config's three synthetic sources, "
                      "with the command's --set changes)",
        "command": args.command,
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
    DEST.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "model.safetensors", DEST / "model.safetensors")
    (DEST / "model.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"bundled {args.run} -> {DEST} ({(DEST / 'model.safetensors').stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
