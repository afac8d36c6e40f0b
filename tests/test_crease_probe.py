"""benchmarks/crease_probe.py: the three conditions reach the renderer, the report's numbers."""

import sys
from pathlib import Path

import numpy as np
import torch

from facemtl.data.synth import render_face

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import crease_probe as cp  # noqa: E402

CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]


class RecordingReader:
    """Stand-in predictor: keeps every face it is given and answers class (running count) % 7."""

    input_size = 64

    def __init__(self):
        self.seen = []

    def normalise(self, crops):
        return torch.from_numpy(crops)

    def forward(self, crops, tasks):
        assert tasks == ("emotion",)
        logits = torch.zeros(len(crops), 7)
        for row in range(len(crops)):
            logits[row, (len(self.seen) + row) % 7] = 1.0
        self.seen += list(crops.numpy())
        return {"emotion": logits}


def test_read_renders_the_same_faces_with_the_creases_asked_for():
    images = {}
    for name, creases in cp.CONDITIONS.items():
        reader = RecordingReader()
        labels, preds = cp.read(reader, 12, 1, "studio", creases, batch=5)  # batches of 5, 5, 2
        faces = [render_face(1, i, "studio", 64, creases=creases) for i in range(12)]
        np.testing.assert_array_equal(np.stack(reader.seen), np.stack([f["image"] for f in faces]))
        assert labels.tolist() == [f["emotion"] for f in faces]
        assert preds.tolist() == [i % 7 for i in range(12)]  # in order across batches
        images[name] = np.stack(reader.seen)
    assert not np.array_equal(images["none"], images["all"])


def test_report_counts_by_hand():
    labels = np.array([6, 6, 6, 1, 1, 4])
    preds = np.array([6, 1, 3, 1, 6, 4])
    text = cp.report("all", labels, preds, CLASSES)
    first, neutral, sad, fear = text.splitlines()
    assert first.startswith("all       accuracy 0.500")  # 6->6, 1->1, 4->4 of six
    assert "Angr -" in first and "Disg 0.50" in first and "Sad 1.00" in first and "Neut 0.33" in first
    assert neutral == "   true Neutral (3) read as: Disgust 1, Happy 1, Neutral 1"
    assert sad == "   true Sad (1) read as: Sad 1"
    assert fear == "   true Fear (0) read as: "
