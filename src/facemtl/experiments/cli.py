"""``facemtl experiment <paper> <experiment> ...``: the papers' tables and ablations as commands.

Each module in ``EXPERIMENT_MODULES`` exposes ``register(subparsers)`` and adds its paper's
parser (``dcnet``: Deep Collaboration, section 4).
"""

from __future__ import annotations

import importlib

EXPERIMENT_MODULES: tuple[str, ...] = ("facemtl.experiments.dcnet",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run a paper's experiment (tables, ablations) end to end",
        description="Run a paper's experiments end to end and write tables/figures to --out.",
    )
    papers = p.add_subparsers(dest="paper", metavar="PAPER", required=True)
    for name in EXPERIMENT_MODULES:
        importlib.import_module(name).register(papers)
