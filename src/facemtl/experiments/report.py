"""``report.html`` of ``facemtl reproduce``: one self-contained page (figures embedded as PNG
data URIs, no scripts, no server) with the claims and their verdicts, the papers' tables with
the paper's numbers beside ours, training curves, the stage curves of Figure 7, CED curves,
confusion matrices, Deep Collaboration's comparison, data-scarcity, task-weight and ablation
figures, and a strip of qualitative predictions with a colour legend.

Plots are drawn with matplotlib (Agg backend).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

VERDICT_COLOURS = {"reproduced": "#d7f5d7", "refuted": "#f8d0d0", "inconclusive": "#eeeeee"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, name: str = "figure") -> str:
    """The figure as an embedded <img>; ``name`` is its alt text and, in a run report, its PNG
    file name in the run folder."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return _img(buf.getvalue(), name)


def _img(data: bytes, alt: str = "figure") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.2f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _claims_table(claims: list[dict]) -> str:
    rows = []
    for c in claims:
        lo, hi = c["ci95"]
        ci = f"[{lo:+.2f}, {hi:+.2f}]" if lo is not None else "n/a"
        mean = f"{c['mean']:+.2f}" if c["mean"] is not None else "n/a"
        colour = VERDICT_COLOURS[c["verdict"]]
        untested = f"<br><small>{html.escape(c['untested'])}</small>" if c.get("untested") else ""
        rows.append(f"<tr><td>{html.escape(c['id'])}</td><td>{html.escape(c['statement'])}</td>"
                    f"<td>{html.escape(c['where'])}</td><td>{html.escape(c['paper_numbers'])}</td>"
                    f"<td>{html.escape(c['measure'])}</td><td>{mean}</td><td>{ci}</td><td>{c['n']}</td>"
                    f"<td style=\"background:{colour}\"><b>{c['verdict']}</b>{untested}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("id", "claim", "where", "paper", "our measure", "mean", "95% CI", "n",
                                              "verdict"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ---------------------------------------------------------------------------------------------
# iFAN sections


def _ifan_tables(results: dict) -> str:
    """Tables 1-3 and 4 layout: paper vs ours (mean over seeds) per model and iteration."""
    from facemtl.experiments.reproduce import _PAPER, IFAN_TASKS, _metric

    seeds = sorted(results)

    def ours(name, task, it="last"):
        vals = [_metric(results[s][name], task, it) for s in seeds if name in results[s]]
        return float(np.mean(vals)) if vals else math.nan

    rows = [["single task", *[v for t in IFAN_TASKS for v in (_PAPER["single"][t], ours(f"single_{t}", t))]]]
    for i in range(3):
        paper = _PAPER["3T_iter0"] if i == 0 else (_PAPER["3T"] if i == 2 else {})
        rows.append([f"3T Iter{i}", *[v for t in IFAN_TASKS for v in (paper.get(t, math.nan), ours("3T", t, i))]])
    rows.append(["2T Iter2", *[v for t in IFAN_TASKS for v in (_PAPER["2T"].get(t, math.nan),
                                                               ours("2T", t) if t != "emotion" else math.nan)]])
    rows.append(["3T Iter4 (Table 4)", *[v for t in IFAN_TASKS for v in (_PAPER["3T_iter4"][t], ours("iter4", t, 4))]])
    rows.append(["resize re-encoders", *[v for t in IFAN_TASKS for v in (_PAPER["resize"][t], ours("resize", t))]])
    rows.append(["shared batch norm", *[v for t in IFAN_TASKS for v in (_PAPER["shared_bn"][t], ours("shared_bn", t))]])
    # what a trivial predictor scores on the same test sets: every row above must beat it to mean anything
    trivial = {"landmarks": ("mean_shape_nme",), "parsing": ("all_skin", "overall"), "emotion": ("majority_accuracy",)}

    def baseline(task):
        vals = []
        for s in seeds:
            b = results[s]["3T"].get("baselines", {}).get(task)
            for key in trivial[task] if b else ():
                b = b.get(key) if isinstance(b, dict) else None
            if isinstance(b, (int, float)):
                vals.append(float(b))
        return float(np.mean(vals)) if vals else math.nan

    rows.append(["trivial: mean shape / all skin / majority class",
                 *[v for t in IFAN_TASKS for v in (math.nan, baseline(t))]])
    header = ["model", "NME paper", "NME ours", "parsing F1 paper", "F1 ours", "emotion acc. paper", "acc. ours"]
    return _table(header, rows) + (f"<p>Ours: mean over {len(seeds)} seed(s), last iteration unless named; "
                                   "NME in % of the inter-ocular distance (lower is better).</p>")


def _curves(run_dir: Path) -> str:
    """Training losses (steps.csv) and, for Figure 7, the per-epoch Iter0 metrics (epochs.csv)."""
    plt = _plt()
    out = []
    steps = list(csv.DictReader(open(run_dir / "steps.csv"))) if (run_dir / "steps.csv").exists() else []
    if steps:
        fig, ax = plt.subplots(figsize=(7, 3))
        # hybrid rows name their task; joint rows carry one <task>_loss column per task
        # one line per (task, stage): a task's stage-1 and stage-2 losses are not joined across
        # the updates of the other tasks' pre-training
        curves: dict[tuple[str, str], list] = {}
        for r in steps:
            stage = r.get("stage", "")
            if r.get("task"):
                curves.setdefault((r["task"], stage), []).append((int(r["step"]), float(r["loss"])))
            for key, value in r.items():
                if key.endswith("_loss") and value not in ("", None):
                    curves.setdefault((key[: -len("_loss")], stage), []).append((int(r["step"]), float(value)))
        colours = {}
        for (task, stage), pts in sorted(curves.items()):
            first = task not in colours
            line, = ax.plot(*zip(*pts), ".-", ms=3, label=task if first else None, color=colours.get(task))
            colours.setdefault(task, line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_ylabel("loss (sum over iterations)")
        ax.legend(fontsize=8)
        ax.set_title("training loss per task", fontsize=9)
        out.append(_png(fig, "training_loss"))
    from facemtl.experiments.reproduce import epoch_rows

    epochs = epoch_rows(run_dir / "epochs.csv") if (run_dir / "epochs.csv").exists() else []
    keys = sorted({k for r in epochs for k in r if k.endswith("_iter0") and not k.startswith("mean_")})
    scored = [r for r in epochs if any(not math.isnan(r.get(k, math.nan)) for k in keys)]
    if len(scored) < 2:
        if (run_dir / "epochs.csv").exists():
            out.append("<p>Figure 7 (each task's Iter0 score at every epoch end) needs per-epoch evaluation: "
                       "train with <code>--set logging.eval_every_epoch=true</code>.</p>")
    else:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.8))
        for ax, key in zip(np.atleast_1d(axes), keys):
            vals = [r.get(key, math.nan) for r in epochs]
            ax.plot(range(len(vals)), vals, "o-", ms=3)
            stage2 = next((i for i, r in enumerate(epochs) if r["stage"] != "1"), len(epochs))
            ax.axvline(stage2 - 0.5, color="grey", ls="--", lw=0.8)
            ax.set_title(key.replace("_iter0", " (Iter0)"), fontsize=9)
            ax.set_xlabel("epoch end (dashed: stage 2 starts)", fontsize=8)
        fig.suptitle("Figure 7: each task during task-wise pre-training and batch-wise alternation", fontsize=10, y=1.06)
        out.append(_png(fig, "figure7_per_epoch"))
    return "".join(out)


def _draw_confusion(ax, confusion, names, title: str) -> None:
    """A confusion matrix with rows (true classes) normalised, each cell labelled."""
    conf = np.array(confusion, dtype=float)
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def _confusions(results: dict) -> str:
    plt = _plt()
    from facemtl.tasks import get_task

    names = get_task("emotion").class_names
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (label, run) in zip(axes, (("single task", "single_emotion"), ("iFAN 3T (last iteration)", "3T"))):
        its = results[0][run]["iterations"]
        _draw_confusion(ax, its[str(max(map(int, its)))]["emotion"]["confusion"], names, label)
    fig.suptitle("Figure 6: emotion confusion matrices (rows normalised, seed 0)", fontsize=10)
    return _png(fig)


def _load_run(run_dir: Path):
    """(model, info, sources) of a finished run folder, from its files."""
    from facemtl.config import config_from_dict
    from facemtl.data.mixing import build_sources
    from facemtl.models.checkpoint import load_model

    model, info = load_model(run_dir)
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    return model, info, build_sources(config, config.build_tasks())


def _model_views(run_dir: Path, loaded: tuple | None = None) -> str:
    """CED curves per iteration for every points task, and a qualitative strip, from a kept model
    (``loaded``: its (model, info, sources) when the caller has them, else read from the folder)."""
    if loaded is None and not (run_dir / "model.safetensors").exists():
        return "<p>(no model weights in the run folder: no CED curves or qualitative strip)</p>"
    import torch

    from facemtl.data.mixing import eval_batches
    from facemtl.kinds import eye_indices, kind_of
    from facemtl.metrics.landmarks import ced_curve, nme

    model, info, sources = loaded if loaded is not None else _load_run(run_dir)
    model.eval()  # the trainer hands over its model as training left it
    plt = _plt()
    parts = []
    for task in (t for t in model.tasks if kind_of(t).named_points):
        src = next((s for s in sources if task.name in [x.name for x in s.tasks] and len(s.test)), None)
        if src is None:
            continue
        errors: dict[int, list] = {}
        with torch.no_grad():
            for batch, _ in eval_batches(src, 64):
                for i, out in enumerate(model(batch["image"])):
                    e = nme(model.decode(task.name, out[task.name]).float(), batch[task.name], eye_indices(task),
                            batch.get(f"{task.name}_visible"))
                    errors.setdefault(i, []).append(e)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, chunks in errors.items():
            e = torch.cat(chunks)
            t, frac = ced_curve(e[~torch.isnan(e)], threshold=0.3)
            ax.plot(t.numpy() * 100, frac.numpy(), label=f"Iter{i}")
        ax.axvline(10, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("NME (% of inter-ocular distance)")
        ax.set_ylabel("fraction of test faces")
        ax.set_title(f"CED curves, {task.name}", fontsize=9)
        ax.legend(fontsize=8)
        parts.append(_png(fig, f"ced_{task.name}"))
    parts.append(_strip(model, info, sources))
    return "".join(parts)


def _strip(model, info: dict, sources) -> str:
    """Three test faces per source (as the model sees them) with every task drawn, and a colour
    legend per segmentation task."""
    from matplotlib.patches import Patch

    from facemtl.inference.predictor import Predictor
    from facemtl.inference.render import colour_mask, draw_overlay
    from facemtl.kinds import KINDS, kind_of

    predictor = Predictor(model, info, detector="none")
    tiles = []
    for src in sources:
        for i in range(min(3, len(src.test))):
            raw = src.test[i]
            crop = src.eval_transform(raw) if src.eval_transform is not None else raw
            # drawn at 3x so the marks and labels stay readable; the model sees the same crop
            image = np.kron(crop["image"], np.ones((3, 3, 1), np.uint8))
            # the strip has one legend below it: none inside each small tile
            tiles.append(draw_overlay(image, predictor(image), model.tasks, legend=False))
    if not tiles:
        return ""
    h = max(t.shape[0] for t in tiles)
    strip = np.concatenate([np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles], 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(18, strip.shape[1] / 60), 3.2))
    ax.imshow(strip)
    ax.axis("off")
    handles = [Patch(color=colour_mask(np.array([k]))[0] / 255, label=n)
               for t in model.tasks if kind_of(t) is KINDS["segmentation"] for k, n in enumerate(t.class_names) if k]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=5, fontsize=7, frameon=False)
    ax.set_title("test predictions (last iteration), every task drawn", fontsize=9)
    return _png(fig, "predictions")


# ---------------------------------------------------------------------------------------------
# Deep Collaboration sections


def _dcnet_figures(result: dict, out: Path) -> str:
    plt = _plt()
    parts = []
    for bb, per_seed in result["compare"].items():
        models = list(next(iter(per_seed.values())))
        fr = np.array([[per_seed[s][m]["failure_rate"] for m in models] for s in sorted(per_seed)])
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(models, fr.mean(0), yerr=fr.std(0) if len(fr) > 1 else None, capsize=3,
               color=["tab:green" if m == "dcnet" else "tab:blue" for m in models])
        ax.set_ylabel("landmark failure rate %")
        ax.set_title(f"Figure 3 ({bb}): mean over {len(fr)} seed(s)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        parts.append(_png(fig))
    seeds = sorted(result["scarcity"])
    if seeds:
        ratios = sorted(result["scarcity"][seeds[0]], key=float)
        models = list(result["scarcity"][seeds[0]][ratios[0]])
        fig, ax = plt.subplots(figsize=(5, 3))
        for m in models:
            ax.plot([float(r) for r in ratios],
                    [np.mean([result["scarcity"][s][r][m]["failure_rate"] for s in seeds]) for r in ratios], "o-", label=m)
        ax.set_xlabel("train ratio")
        ax.set_ylabel("failure rate %")
        ax.set_title("Table 1: data scarcity", fontsize=9)
        ax.legend(fontsize=8)
        parts.append(_png(fig))
    for name in ("task_weights/task_weights.png", "ablation/ablation.png"):
        path = out / "dcnet" / name
        if path.exists():
            parts.append(_img(path.read_bytes(), name))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# one run


def _run_confusions(metrics: dict, tasks) -> str:
    """One confusion matrix per category task (last iteration), rows normalised."""
    plt = _plt()
    its = metrics["iterations"]
    last = its[str(max(map(int, its)))]
    parts = []
    for task in tasks:
        r = last.get(task.name)
        if not r or "confusion" not in r:
            continue
        names = task.class_names or [str(i) for i in range(len(r["confusion"]))]
        fig, ax = plt.subplots(figsize=(0.5 * len(names) + 2.5, 0.5 * len(names) + 2))
        _draw_confusion(ax, r["confusion"], names, f"{task.name}: confusion (rows normalised)")
        parts.append(_png(fig, f"confusion_{task.name}"))
    return "".join(parts)


def write_run_report(run_dir, metrics: dict | None = None, loaded: tuple | None = None) -> Path:
    """``run_dir/report.html`` for one training run: the result tables (one row per iteration,
    trivial baselines below; ``metrics`` or the run's metrics.json), the loss and per-epoch curves,
    confusion matrices, CED curves and a strip of test predictions. ``loaded``: the run's
    (model, info, sources) when the caller holds them (the trainer), so nothing is read or
    rendered again."""
    from facemtl.engine.evaluate import format_tables
    from facemtl.files import atomic_write_bytes

    run_dir = Path(run_dir)
    metrics = metrics if metrics is not None else json.loads((run_dir / "metrics.json").read_text())
    loaded = loaded if loaded is not None else _load_run(run_dir)
    model = loaded[0]
    sections = [f"<h1>facemtl run {html.escape(run_dir.name)}</h1>",
                "<h2>Test results</h2>", f"<pre>{html.escape(format_tables(metrics, model.tasks))}</pre>",
                "<h2>Training curves</h2>", _curves(run_dir),
                "<h2>Confusion matrices</h2>", _run_confusions(metrics, model.tasks),
                "<h2>CED curves and predictions</h2>", _model_views(run_dir, loaded)]
    path = run_dir / "report.html"
    page = _page("facemtl run", sections)
    # the same figures as PNG files beside the CSVs, named by their alt text (training_loss.png,
    # confusion_<task>.png, ced_<task>.png, predictions.png, figure7_per_epoch.png)
    for name, data in re.findall(r'<img alt="([A-Za-z0-9_]+)" src="data:image/png;base64,([^"]+)">', page):
        atomic_write_bytes(run_dir / f"{name}.png", base64.b64decode(data))
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def _page(title: str, sections: list[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left}th{background:#f0f0f0}"
             "img{max-width:100%;margin:0.5em 0;display:block}"
             "pre{font-size:11px;overflow-x:auto;max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")


def _wall_time(result: dict) -> str:
    """This invocation's wall time and, when the folder saw several, all of theirs."""
    text = f"{result['wall_seconds']:.0f} s"
    runs = result.get("invocations", [])
    if len(runs) > 1:
        text += (f" for this invocation; {sum(r['wall_seconds'] for r in runs):.0f} s over the {len(runs)} "
                 f"invocations in this folder (interrupted, continued, rerun or sharded suites; shards may have run "
                 f"at the same time)")
    return text


def write_report(result: dict, data: dict, out: Path) -> Path:
    """Write ``out/report.html`` for a reproduce result (claims.json content + the raw results)."""
    from facemtl.files import atomic_write_bytes

    v = result["versions"]
    sections = [
        f"<h1>facemtl reproduce: {html.escape(result['suite'])}</h1>",
        f"<p>Budget <b>{html.escape(result['budget'])}</b>, {result['seeds']} seed(s), wall time "
        f"{_wall_time(result)}; facemtl {v['facemtl']}, torch {v['torch']}, Python {v['python']}.<br>"
        f"Command: <code>{html.escape(result['command'] or '')}</code></p>",
        "<p>Each claim's differences are oriented so that a positive value supports it; the verdict comes from the "
        "95% t-interval of their mean (reproduced: above 0; refuted: below 0; inconclusive: contains 0 or n &lt; 2).</p>",
        "<h2>Claims</h2>", _claims_table(result["claims"]),
    ]
    if "ifan" in data:
        run0 = out / "ifan" / "seed0" / "3T"
        sections += ["<h2>iFAN: Tables 1-4 and the ablations (paper vs ours)</h2>", _ifan_tables(data["ifan"]),
                     "<h2>iFAN: training curves</h2>", _curves(run0),
                     "<h2>iFAN: confusion matrices</h2>", _confusions(data["ifan"]),
                     "<h2>iFAN: CED curves and predictions</h2>", _model_views(run0)]
    if "dcnet" in data:
        sections += ["<h2>Deep Collaboration: Figure 3, Table 1, Figure 5, Figure 6</h2>",
                     _dcnet_figures(data["dcnet"], out)]
    path = out / "report.html"
    atomic_write_bytes(path, _page("facemtl reproduce", sections).encode("utf-8"))
    return path
