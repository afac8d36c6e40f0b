"""``facemtl train``, ``facemtl train-refiner`` and ``facemtl eval``."""

from __future__ import annotations

from pathlib import Path

from facemtl.errors import FacemtlError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (iFAN Algorithm 1, or joint training) from a YAML config",
        description="Train a model from a YAML config (defaults: the built-in iFAN run on synthetic faces). "
        "The run folder gets model.safetensors/model.json, train_state.*, config.json, steps.csv, "
        "epochs.csv, tb/ (TensorBoard) and metrics.json. Ctrl-C saves a resumable state.",
    )
    p.add_argument("config", nargs="?", help="YAML config file, the name of a config shipped with facemtl (e.g. "
                   "finetune_bundled; a wrong name lists them) or a run folder (its config.json); omit for the "
                   "built-in default run; with --resume, omit to reuse the run's config.json")
    p.add_argument("--out", metavar="DIR",
                   help="run folder to write (default: runs/<config name>-<date>-<time>; required with --resume)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set schedule.lr=0.0005 --set data.0.n_train=64 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its saved state")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="save a resumable state and stop after update N")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_train)

    from facemtl.engine.refiner import LEARNED_RATIO, STAGE_GUESSES, RefinerRecipe

    default = RefinerRecipe()
    r = subparsers.add_parser(
        "train-refiner",
        help="train the point refiner (a second stage for the five landmarks) on synthetic faces",
        description="Train the point refiner: a small network that moves each of a face model's five points to "
        "where it finds it in a patch around it (facemtl.models.refiner), on synthetic faces only, in two "
        "stages: stage 1 from guesses as far off as a face model's points, stage 2 (applied after it) from "
        "guesses as near as stage 1 leaves them. Writes refiner.safetensors and refiner.json (stage 1) and "
        "refiner.stage2.* (stage 2) into --out; a checkpoint folder holding them refines its points in facemtl "
        "predict and score (--refiner). A stage that did not learn (its held-out synthetic error not below "
        f"{LEARNED_RATIO:.0%} of its guesses') is an error, and nothing is written.",
    )
    r.add_argument("--out", metavar="DIR", required=True, help="folder to write (e.g. a run folder)")
    r.add_argument("--faces", type=int, default=default.faces,
                   help=f"synthetic faces rendered (default {default.faces}; {default.guesses} guesses each)")
    r.add_argument("--steps", type=int, default=default.steps, help=f"updates (default {default.steps})")
    r.add_argument("--style", default=default.style, help=f"synthetic style (default {default.style})")
    r.add_argument("--seed", type=int, default=default.seed, help=f"training seed (default {default.seed})")
    r.add_argument("--stage", choices=[*map(str, STAGE_GUESSES), "all"], default="all",
                   help="the stage to train and write (its files only: e.g. stage 2 beside an existing stage 1); "
                   "default all, one after the other, written together")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_train_refiner)

    e = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on its sources' test splits",
        description="Evaluate a trained model on the test split of each task's source, per iteration "
        "(tables like iFAN's Tables 1-3), on the crops training cuts from the labels. To score a checkpoint on "
        "a labelled dataset's photos the way `facemtl predict` reads them (a detector, misses counted): "
        "facemtl score.",
    )
    e.add_argument("checkpoint", help="run folder, model.safetensors or model.json")
    e.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    e.add_argument("--split", default="test", help="split to score (default: test; synthetic sources have train and test)")
    e.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default: 32)")
    e.add_argument("--config", metavar="YAML", help="config describing the data (default: the run's config.json)")
    e.add_argument("--report", action="store_true",
                   help="also write RUN/report.html (tables, curves, confusion matrices, CED curves, predictions)")
    e.set_defaults(func=_eval)


def _default_run_dir(config_path: str | None) -> Path:
    import time

    name = Path(config_path).stem if config_path else "ifan_synth_default"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _train(args) -> int:
    from facemtl.config import load_config
    from facemtl.engine.loop import load_run_config, train

    # Every argument and the whole config are checked before any work; train() checks the folder.
    if args.stop_after is not None and args.stop_after <= 0:
        raise FacemtlError(f"--stop-after must be a positive number of updates, got {args.stop_after}")
    if args.out is None:
        if args.resume:
            raise FacemtlError("--resume needs --out DIR: the run folder to continue")
        args.out = str(_default_run_dir(args.config))
    if args.config is None and args.resume:
        if args.overrides:
            raise FacemtlError("--set with --resume needs the config file too (facemtl train CONFIG --out DIR --resume)")
        config = load_run_config(args.out)
    else:
        config = load_config(args.config, args.overrides)
    from facemtl.engine.memory import keep_freed_memory

    keep_freed_memory()  # a training process reuses its freed tensors' pages (~1.1x faster updates)
    run = train(config, args.out, resume=args.resume, stop_after=args.stop_after, quiet=args.quiet)
    if not args.quiet:
        print(f"run saved in {run}")
    return 0


def _train_refiner(args) -> int:
    from facemtl.engine.refiner import STAGE_GUESSES, RefinerRecipe, check_learned, train_refiner
    from facemtl.files import atomic_write_files
    from facemtl.models.refiner import stage_bytes

    stages = list(STAGE_GUESSES) if args.stage == "all" else [int(args.stage)]
    recipes = [RefinerRecipe.for_stage(k, faces=args.faces, steps=args.steps, style=args.style, seed=args.seed)
               for k in stages]
    for recipe in recipes:
        recipe.check()  # before any face is drawn
    files, said = [], []
    for stage, recipe in zip(stages, recipes):
        refiner, info = train_refiner(recipe, progress=not args.quiet)
        check_learned(info, args.out)
        files += stage_bytes(args.out, refiner, info, stage)
        held = info["held_out"]
        said.append(f"stage {stage}: held-out synthetic points {held['point_error']:.2f}% of the inter-ocular "
                    f"distance from guesses {held['guess_error']:.2f}%")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_files(files)  # every stage trained, or none written
    if not args.quiet:
        print(f"point refiner saved in {args.out}: " + "; ".join(said))
    return 0


def _eval(args) -> int:
    import dataclasses

    from facemtl.config import load_config
    from facemtl.data.mixing import build_sources
    from facemtl.engine.evaluate import evaluate, format_tables
    from facemtl.files import atomic_write_bytes
    from facemtl.models.checkpoint import load_model
    from facemtl.outputs import check_output_file, dumps

    if args.batch_size <= 0:
        raise FacemtlError(f"--batch-size must be positive, got {args.batch_size}")
    if args.json:  # before the evaluation, not after it
        check_output_file(args.json, "--json")
    if args.report:
        ckpt = Path(args.checkpoint)
        check_output_file((ckpt if ckpt.is_dir() else ckpt.parent) / "report.html", "--report")
    model, info = load_model(args.checkpoint)
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    if not args.config and not (run_dir / "config.json").exists():
        raise FacemtlError(f"{run_dir} has no config.json describing the data; pass --config YAML")
    config = load_config(args.config or run_dir)  # a run folder reads as its config.json
    synthetic = [s.name == "synth" for s in config.data]
    if args.split not in ("test", "train") and any(synthetic):
        raise FacemtlError(f"--split {args.split!r}: synthetic sources have only 'train' and 'test' splits")
    if args.split != "test":
        data = tuple(s if s.name == "synth" else dataclasses.replace(s, test_split=args.split) for s in config.data)
        config = dataclasses.replace(config, data=data)
    sources = build_sources(config, model.tasks)
    if args.split == "train":
        for src, synth in zip(sources, synthetic):
            if synth:
                src.test = src.train
    result = evaluate(model, info, sources, batch_size=args.batch_size, progress=True)
    print(format_tables(result, model.tasks))
    if args.json:  # atomic (an abort keeps the old file), strict JSON (a NaN metric is null)
        atomic_write_bytes(Path(args.json), (dumps(result, indent=2) + "\n").encode("utf-8"))
    if args.report:
        from facemtl.experiments.report import write_run_report

        print(f"report: {write_run_report(run_dir, result)}")
    return 0
