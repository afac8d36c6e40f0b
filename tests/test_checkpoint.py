import json
import os

import numpy as np
import pytest
import torch

from facemtl.engine.checkpoint import load_train_state, optimizer_state, restore_optimizer, save_train_state
from facemtl.files import atomic_write_bytes
from facemtl.models.checkpoint import FORMAT_VERSION, load_model, save_checkpoint
from facemtl.errors import FacemtlError
from facemtl.models.registry import create_model

KW = dict(tasks=["landmarks", "parsing", "emotion"], num_sources=3, task_sources=[0, 1, 2], iterations=1,
          growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4, reencoder_channels=2,
          points_hidden=8, category_hidden=8)


def _model():
    torch.manual_seed(0)
    m = create_model("ifan", **KW)
    # make the BN running statistics non-trivial so the round trip has to carry buffers too
    m.train()
    m(torch.randn(2, 3, 64, 64), source=1)
    return m.eval()


def _info():
    return {"model": {"name": "ifan", "config": dict(KW)}, "task_sources": [0, 1, 2],
            "sources": [{"name": "synth", "tasks": ["landmarks"], "style": "wild"},
                        {"name": "synth", "tasks": ["parsing"], "style": "studio"},
                        {"name": "synth", "tasks": ["emotion"], "style": "webcam"}],
            "input_size": 64}


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _model()
    save_checkpoint(tmp_path, model, _info())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    for path in (tmp_path, tmp_path / "model.safetensors", tmp_path / "model.json"):
        loaded, info = load_model(path)
        assert not loaded.training
        with torch.no_grad():
            out = loaded(x)
        for a, b in zip(ref, out):
            for k in a:
                assert torch.equal(a[k], b[k]), k
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["format"] == "facemtl-checkpoint" and info["format_version"] == FORMAT_VERSION
    assert [t["name"] for t in info["tasks"]] == ["landmarks", "parsing", "emotion"]
    assert info["tasks"][0]["flip_permutation"] == [1, 0, 2, 4, 3]
    assert info["tasks"][2]["class_names"][3] == "Happy"
    assert info["tasks"][0]["class_names"] == ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
    assert info["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert info["input_size"] == 64 and info["task_sources"] == [0, 1, 2] and info["sources"][1]["style"] == "studio"
    # no temp files left behind by the atomic writes
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]


def test_load_errors_are_one_line_facemtl_errors(tmp_path):
    with pytest.raises(FacemtlError, match="checkpoint not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(FacemtlError, match="checkpoint not found"):
        load_model(tmp_path)  # an empty folder
    model = _model()
    save_checkpoint(tmp_path, model, _info())
    meta = json.loads((tmp_path / "model.json").read_text())

    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(FacemtlError, match="malformed JSON"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(FacemtlError, match="format_version 99 is not supported"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(FacemtlError, match="not a facemtl checkpoint"):
        load_model(tmp_path)

    # weights of a different architecture
    wider = {**meta, "model": {"name": "ifan", "config": {**meta["model"]["config"], "growth_rate": 3}}}
    (tmp_path / "model.json").write_text(json.dumps(wider))
    with pytest.raises(FacemtlError, match="weights do not match model 'ifan'"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps(meta))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(FacemtlError, match="not a readable safetensors file"):
        load_model(tmp_path)


def test_optimizer_and_train_state_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.RMSprop(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    tensors, meta = optimizer_state(opt, "optimizer")
    save_train_state(tmp_path, tensors, {"step": 3, "total_steps": 5, "optimizer": meta})
    t2, m2 = load_train_state(tmp_path)
    assert m2["step"] == 3
    opt2 = torch.optim.RMSprop(net.parameters(), lr=1.0)
    restore_optimizer(opt2, "optimizer", t2, m2["optimizer"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k in a["state"][pid]:
            assert torch.equal(torch.as_tensor(a["state"][pid][k]), torch.as_tensor(b["state"][pid][k]))
    with pytest.raises(FacemtlError, match="nothing to resume"):
        load_train_state(tmp_path / "empty")



@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_fused_optimiser_resumes_channels_last_weights_exactly(tmp_path, name):
    """State is saved contiguous; restored, each tensor takes its weight's layout again (a fused
    step walks memory as flat: NCHW moments beside a channels-last weight pair the wrong elements)."""
    def build():
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last))
        opt = (torch.optim.AdamW([w], lr=0.1, fused=True) if name == "adamw"
               else torch.optim.SGD([w], lr=0.1, momentum=0.9, fused=True))
        return w, opt

    grads = [torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    w, opt = build()
    for g in grads:
        w.grad = g.clone()
        opt.step()
    uninterrupted = w.detach().clone()
    w, opt = build()
    w.grad = grads[0].clone()
    opt.step()
    tensors, meta = optimizer_state(opt, "optimizer")
    save_train_state(tmp_path, {**tensors, "w": w.detach()}, {"step": 1, "total_steps": 2, "optimizer": meta})
    saved, meta = load_train_state(tmp_path)
    assert all(t.is_contiguous() for t in saved.values())
    w2, opt2 = build()
    with torch.no_grad():
        w2.copy_(saved.pop("w"))
    restore_optimizer(opt2, "optimizer", saved, meta["optimizer"])
    assert all(v.stride() == w2.stride() for v in opt2.state[w2].values() if v.dim())
    w2.grad = grads[1].clone()
    opt2.step()
    assert torch.equal(w2.detach(), uninterrupted)

def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]  # fails inside the write
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


_PREDICT_IN_FRESH_INTERPRETER = r"""
import json, pickle, sys
import numpy as np
import torch

def refuse(*args, **kwargs):
    raise AssertionError("a checkpoint load reached an unpickler")

# safetensors + JSON only: every unpickling entry point fails loudly
torch.load = torch.serialization.load = refuse
pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse

import facemtl

predictor = facemtl.load(sys.argv[1], detector="none")
image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
faces = predictor(image)
print(json.dumps({
    "faces": len(faces),
    "landmarks": np.asarray(faces[0]["landmarks"]).tolist(),
    "parsing_shape": list(np.asarray(faces[0]["parsing"]).shape),
    "emotion_probs": sum(faces[0]["emotion"]["probs"].values()),
    "engine_modules": sorted(m for m in sys.modules if m == "facemtl.engine" or m.startswith("facemtl.engine.")),
}))
"""


def test_prediction_from_a_checkpoint_needs_neither_the_trainer_nor_unpickling(tmp_path):
    """In a fresh interpreter, ``facemtl.load`` + predict on one image with pickle/torch.load disabled,
    and without importing any ``facemtl.engine`` module: inference must not depend on the trainer."""
    import subprocess
    import sys

    save_checkpoint(tmp_path, _model(), _info())
    proc = subprocess.run([sys.executable, "-c", _PREDICT_IN_FRESH_INTERPRETER, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["faces"] == 1 and out["parsing_shape"] == [48, 40]  # whole image is the face, original size
    points = np.asarray(out["landmarks"])
    assert points.shape == (5, 2) and np.isfinite(points).all()
    assert out["emotion_probs"] == pytest.approx(1.0, abs=1e-5)
    assert out["engine_modules"] == [], f"predicting imported the trainer: {out['engine_modules']}"
