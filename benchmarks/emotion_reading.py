"""What the emotion benchmarks share: their command lines' checkpoints ('bundled': the package's
model) and renderer options, and the emotion a model reads on crops already in its training framing."""

from __future__ import annotations

import numpy as np
import torch


def load_predictor(name: str, **kwargs):
    """A :class:`~facemtl.inference.predictor.Predictor` of a run folder or model file, or of the
    bundled model for ``"bundled"``; ``kwargs`` go to ``Predictor.from_checkpoint``."""
    from facemtl.inference.predictor import Predictor
    from facemtl.models.checkpoint import bundled_model

    return Predictor.from_checkpoint(bundled_model() if name == "bundled" else name, **kwargs)


def model_and_renderer_arguments(ap, checkpoints=("bundled",)) -> None:
    """Add the checkpoints (positional, default ``checkpoints``), ``--seed`` and ``--style`` the
    emotion benchmarks take to the parser ``ap``."""
    ap.add_argument("checkpoints", nargs="*", default=list(checkpoints),
                    help="run folders or model files; 'bundled': the package's model")
    ap.add_argument("--seed", type=int, default=7, help="renderer seed (default 7, no training run's)")
    ap.add_argument("--style", default="studio", help="renderer style (default studio)")


def read_emotions(pred, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """The emotion (class index) ``pred`` reads on each (S, S, 3) uint8 crop, through its
    forward pass (its test-time flip included), ``batch`` crops at a time."""
    out = []
    for start in range(0, len(images), batch):
        with torch.no_grad():
            logits = pred.forward(pred.normalise(np.asarray(images[start:start + batch])), ("emotion",))["emotion"]
        out.append(logits.argmax(1).numpy())
    return np.concatenate(out)
