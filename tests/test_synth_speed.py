"""benchmarks/synth_speed.py --fingerprint: one hash that changes with any rendered byte or label."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
_threads = os.environ.get("OMP_NUM_THREADS")
import synth_speed  # noqa: E402  (sets OMP_NUM_THREADS=1 for itself: not for the rest of the suite)

if _threads is None:
    os.environ.pop("OMP_NUM_THREADS", None)

from facemtl.data import synth  # noqa: E402


def test_fingerprint_is_repeatable_and_sees_every_face_and_option():
    feats = synth.ALL_FEATURES
    first = synth_speed.fingerprint("studio", 3, 64, feats)
    assert first == synth_speed.fingerprint("studio", 3, 64, feats)
    assert len(first) == 40
    # another face count, style, size or feature set renders other faces: another hash
    others = {synth_speed.fingerprint("studio", 2, 64, feats), synth_speed.fingerprint("webcam", 3, 64, feats),
              synth_speed.fingerprint("studio", 3, 80, feats),
              synth_speed.fingerprint("studio", 3, 64, feats - {"eyes"})}
    assert first not in others and len(others) == 4


def test_fingerprint_sees_a_label_change(monkeypatch):
    feats = synth.ALL_FEATURES
    first = synth_speed.fingerprint("studio", 2, 64, feats)
    render = synth_speed.render_face

    def relabelled(*args, **kwargs):  # same pixels, one label off by one
        face = render(*args, **kwargs)
        face["emotion"] = (face["emotion"] + 1) % 7
        return face

    monkeypatch.setattr(synth_speed, "render_face", relabelled)
    assert synth_speed.fingerprint("studio", 2, 64, feats) != first
