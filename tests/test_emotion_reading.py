"""benchmarks/emotion_reading.py: 'bundled' names the package's model; crops read in batches, in order."""

import sys
from pathlib import Path

import numpy as np
import torch

from facemtl.inference.predictor import Predictor
from facemtl.models.checkpoint import bundled_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import emotion_reading as er  # noqa: E402


def test_load_predictor_resolves_bundled_and_passes_the_options(monkeypatch):
    calls = []
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, path, **kw: calls.append((path, kw))))
    er.load_predictor("bundled", detector="none")
    er.load_predictor("runs/a", iterations=0)
    assert calls == [(bundled_model(), {"detector": "none"}), ("runs/a", {"iterations": 0})]


def test_read_emotions_in_batches_and_in_order():
    class ByMean:
        batches = []

        def normalise(self, crops):
            return torch.from_numpy(crops).float()

        def forward(self, crops, tasks):
            assert tasks == ("emotion",)
            self.batches.append(len(crops))
            return {"emotion": torch.nn.functional.one_hot(crops.mean((1, 2, 3)).long() % 7, 7).float()}

    images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in range(12)])
    reader = ByMean()
    assert er.read_emotions(reader, images, batch=5).tolist() == [v % 7 for v in range(12)]
    assert reader.batches == [5, 5, 2]


def test_model_and_renderer_arguments_defaults_and_values():
    import argparse

    ap = argparse.ArgumentParser()
    er.model_and_renderer_arguments(ap)
    assert vars(ap.parse_args([])) == {"checkpoints": ["bundled"], "seed": 7, "style": "studio"}
    ap = argparse.ArgumentParser()
    er.model_and_renderer_arguments(ap, checkpoints=[])
    assert vars(ap.parse_args(["a", "b", "--seed", "3", "--style", "webcam"])) == \
        {"checkpoints": ["a", "b"], "seed": 3, "style": "webcam"}
