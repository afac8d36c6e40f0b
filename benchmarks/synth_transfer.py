"""Transfer between synthetic domains: score checkpoints on test faces they were not trained on.

The built-in synthetic data is a stand-in for real photographs only if a model trained on it
copes with faces that look different. This scores each checkpoint (last refinement iteration)
on test sets of chosen styles drawn by the plain renderer (``features: []``, the low-poly faces)
and by the full renderer (every realism feature), with every task scored on the same faces:
held-out styles (``wild``: strong pose and clutter, ``webcam``: heavy degradation) are the
proxy for a new domain, the training styles give the gap to it.

    python benchmarks/synth_transfer.py RUN_DIR [RUN_DIR ...] [--styles wild,webcam,snapshot,studio,classroom] [--n 200]

Prints one row per (checkpoint, renderer, style): landmarks NME % (inter-ocular) and failure
rate, parsing overall F1 %, emotion accuracy %, plus the trivial baselines of each test set.
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="run folders of models trained on synthetic sources")
    ap.add_argument("--styles", default="wild,webcam,snapshot,studio,classroom", help="test styles (comma-separated)")
    ap.add_argument("--renderers", default="plain,full", help="plain (features: []) and/or full (every feature)")
    ap.add_argument("--n", type=int, default=200, help="test faces per (renderer, style) (default 200)")
    ap.add_argument("--seed", type=int, default=77, help="seed of the test faces (default 77: no training seed)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from facemtl.models.checkpoint import load_model
    from facemtl.models.fc_densenet import use_speed_paths

    header = f"{'checkpoint':28s} {'renderer':8s} {'style':10s} {'NME %':>7s} {'fail %':>7s} {'F1 %':>6s} {'emo %':>6s}"
    print(header)
    baselines_done = set()
    for ckpt in args.checkpoints:
        model, info = load_model(ckpt)
        use_speed_paths(model)  # channels-last: the same numbers up to float rounding, faster on a CPU
        for r in args.renderers.split(","):
            for style in args.styles.split(","):
                last, result = score(model, info, style, r, args.n, args.seed)
                lm, pa, em = last.get("landmarks", {}), last.get("parsing", {}), last.get("emotion", {})
                print(f"{str(ckpt)[-28:]:28s} {r:8s} {style:10s} {lm.get('nme', float('nan')):7.2f} "
                      f"{lm.get('failure_rate', float('nan')):7.1f} {pa.get('overall', float('nan')):6.1f} "
                      f"{em.get('accuracy', float('nan')):6.1f}", flush=True)
                if (r, style) not in baselines_done:
                    baselines_done.add((r, style))
                    b = result["baselines"]
                    print(f"{'  (trivial baselines)':28s} {r:8s} {style:10s} "
                          f"{b.get('landmarks', {}).get('mean_shape_nme', float('nan')):7.2f} "
                          f"{b.get('landmarks', {}).get('mean_shape_failure_rate', float('nan')):7.1f} "
                          f"{max(b.get('parsing', {}).get(k, {}).get('overall', float('nan')) for k in ('all_background', 'all_skin')):6.1f} "
                          f"{b.get('emotion', {}).get('majority_accuracy', float('nan')):6.1f}")


def score(model, info: dict, style: str, renderer: str, n: int = 200, seed: int = 77) -> tuple[dict, dict]:
    """A checkpoint's metrics (last iteration) on ``n`` test faces of ``style`` drawn by the
    ``renderer`` ("plain" or "full"), and the whole evaluation (with its trivial baselines)."""
    from facemtl.data.synth import ALL_FEATURES, SyntheticFaces
    from facemtl.engine.evaluate import evaluate

    features = {"plain": frozenset(), "full": ALL_FEATURES}[renderer]
    faces = SyntheticFaces(n, style=style, seed=seed, size=int(info["input_size"]), features=features)
    cached = [faces[i] for i in range(len(faces))]
    result = evaluate(model, info, [cached] * len(info["sources"]), batch_size=50, progress=False)
    return result["iterations"][str(max(map(int, result["iterations"])))], result


if __name__ == "__main__":
    main()
