"""What the emotion benchmarks share: a checkpoint named on their command lines ('bundled': the
package's model) and the emotion a model reads on crops already in its training framing."""

from __future__ import annotations

import numpy as np
import torch


def load_predictor(name: str, **kwargs):
    """A :class:`~facemtl.inference.predictor.Predictor` of a run folder or model file, or of the
    bundled model for ``"bundled"``; ``kwargs`` go to ``Predictor.from_checkpoint``."""
    from facemtl.inference.predictor import Predictor
    from facemtl.models.checkpoint import bundled_model

    return Predictor.from_checkpoint(bundled_model() if name == "bundled" else name, **kwargs)


def read_emotions(pred, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """The emotion (class index) ``pred`` reads on each (S, S, 3) uint8 crop, through its
    forward pass (its test-time flip included), ``batch`` crops at a time."""
    out = []
    for start in range(0, len(images), batch):
        with torch.no_grad():
            logits = pred.forward(pred.normalise(np.asarray(images[start:start + batch])), ("emotion",))["emotion"]
        out.append(logits.argmax(1).numpy())
    return np.concatenate(out)
