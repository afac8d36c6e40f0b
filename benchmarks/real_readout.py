"""Every real-face figure of one or more checkpoints in one table: the columns docs/evidence.md
reports for a recipe, one row per checkpoint, then their mean and the trivial baselines.

Comparing recipes on real faces takes several seeds each (one seed moves the posed count by several
faces), so the figures of many checkpoints are wanted side by side. This runs, for each checkpoint,
the same predictor (Haar detector, test-time flip, the checkpoint's own crop detail) through

* ``posed_expressions.py``: posed expressions right of all 35 (a missed face counts wrong), and
  how many of the posed Angry and Neutral faces;
* ``real_faces.py``: the 40 clear expressions right from the labels' squares and through Haar (of
  the labelled faces Haar finds), the mean NME (%) from both crops, the parsing F1 inside the face
  ovals (labels' squares, all parts);
* ``real_photo.py``: the astronaut's NME (%).

    python benchmarks/real_readout.py --photos RF_DIR --posed POSED_DIR RUN_DIR [RUN_DIR ...] [--markdown]

``RF_DIR`` / ``POSED_DIR``: the folders ``real_faces.py --fetch`` / ``posed_expressions.py --fetch``
filled; 'bundled' names the package's model. Two to three minutes a checkpoint on one thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import posed_expressions
import real_faces
from emotion_reading import load_predictor
from real_photo import astronaut

COLUMNS = ("posed", "posed Angry", "posed Neutral", "the 40", "the 40 Haar", "NME labels", "NME Haar",
           "parsing", "astronaut")


def emotion_right(rows: list[dict], label: str | None = None) -> int:
    """Faces of ``rows`` read as labelled (only those labelled ``label`` when given)."""
    return sum(r.get("emotion") == r["labelled"] for r in rows
               if r["labelled"] and (label is None or r["labelled"] == label))


def readout(posed: list[dict], labels: list[dict], haar: list[dict], astronaut_nme: float | None) -> dict:
    """One checkpoint's figures (:data:`COLUMNS`) from the rows of ``posed_expressions.model_rows``
    and of ``real_faces.score`` with the labels' squares and with the detector."""
    found_l = [r for r in labels if r["found"]]
    found_h = [r for r in haar if r["found"]]
    out = {"posed": emotion_right(posed), "posed Angry": emotion_right(posed, "Angry"),
           "posed Neutral": emotion_right(posed, "Neutral"),
           "the 40": emotion_right(found_l), "the 40 Haar": emotion_right(found_h),
           "NME labels": None, "NME Haar": None, "parsing": None, "astronaut": astronaut_nme}
    if any("nme" in r for r in found_l):
        out["NME labels"] = float(np.mean([r["nme"] for r in found_l]))
        out["NME Haar"] = float(np.mean([r["nme"] for r in found_h]))
    if any("parsing" in r for r in found_l):
        out["parsing"] = real_faces.parsing_f1(found_l)["overall"]
    return out


def mean_row(rows: list[dict]) -> dict:
    """The mean of each column over ``rows`` (a column missing from any row stays None)."""
    return {c: None if any(r[c] is None for r in rows) else float(np.mean([r[c] for r in rows]))
            for c in COLUMNS}


def baselines(posed: list[dict], labels: list[dict], haar: list[dict], astronaut_mean_shape: float | None) -> dict:
    """What needs no model, read as :func:`readout` reads a checkpoint: always answering each set's
    commonest label, and the mean shape (the template's mean face for parsing) in each face's square."""
    def trivial(rows):
        labelled = [r["labelled"] for r in rows if r["labelled"]]
        common = max(sorted(set(labelled)), key=labelled.count)
        # an emotion-only checkpoint (a control) placed no mean shape or mean face: those stay absent
        return [{**{k: v for k, v in r.items() if k not in ("nme", "parsing")}, "emotion": common,
                 **{k: r["baseline_" + k] for k in ("nme", "parsing") if "baseline_" + k in r}} for r in rows]

    return readout(trivial(posed), trivial(labels), trivial(haar), astronaut_mean_shape)


def cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column in ("NME labels", "NME Haar", "astronaut"):
        return f"{value:.2f}"
    if column == "parsing":
        return f"{value:.3f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(named_rows: list[tuple[str, dict]], markdown: bool = False) -> str:
    """``named_rows`` as a plain (or markdown) table under a header of :data:`COLUMNS`."""
    header = ("checkpoint",) + COLUMNS
    body = [(name,) + tuple(cell(c, row[c]) for c in COLUMNS) for name, row in named_rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[k]) for r in [header] + body) for k in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in [header] + body)


def main(argv=None) -> None:
    from facemtl.models.checkpoint import bundled_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="run folders or model files; 'bundled': the package's model")
    ap.add_argument("--photos", type=Path, required=True, metavar="RF_DIR", help="the folder real_faces.py --fetch filled")
    ap.add_argument("--posed", type=Path, required=True, metavar="POSED_DIR",
                    help="the folder posed_expressions.py --fetch filled")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    for folder, tool in ((args.photos, "real_faces.py"), (args.posed, "posed_expressions.py")):
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder; fill it with `python benchmarks/{tool} --fetch {folder}`")

    named, base = [], None
    for ckpt in args.checkpoints:
        path = bundled_model() if ckpt == "bundled" else ckpt
        pred = load_predictor(ckpt)
        posed = posed_expressions.model_rows(pred, args.posed)
        labels = real_faces.score(pred, args.photos, "labels")
        haar = real_faces.score(pred, args.photos, "detector")
        photo = astronaut(path)
        named.append((ckpt, readout(posed, labels, haar, photo.get("nme"))))
        if base is None:  # the trivial answers need no model; the first checkpoint's crops place the mean shape
            base = baselines(posed, labels, haar, photo.get("baseline_nme"))
        print(f"read {ckpt}", flush=True)
    if len(named) > 1:
        named.append((f"mean of {len(named)}", mean_row([r for _, r in named])))
    named.append(("baselines (commonest label; mean shape / mean face)", base))
    print(table(named, args.markdown))


if __name__ == "__main__":
    main()
