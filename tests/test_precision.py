"""Training options for accelerators, exercised on the CPU: bf16 autocast (``precision``),
``torch.compile`` (``compile``) and parallel reading of real-format batches (``reader_threads``).

No GPU is needed: CPU autocast runs the same bf16 code path (on CPUs without native bf16 it is
slow, which is why the tests stay tiny)."""

import numpy as np
import pytest
import torch

from facemtl.config import load_config
from facemtl.data.mixing import BatchStream, Source
from facemtl.data.synth import SyntheticFaces
from facemtl.data.transforms import FaceCrop
from facemtl.engine.evaluate import evaluate
from facemtl.engine.loop import Training
from facemtl.errors import FacemtlError
from facemtl.tasks import get_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = "configs/ifan_synth_smoke.yaml"


def training(*overrides: str) -> Training:
    cfg = load_config(SMOKE, ["logging.tensorboard=false", *overrides])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Training(cfg)


def test_bf16_updates_follow_fp32_and_keep_float32_weights():
    fp32, bf16 = training(), training("precision=bf16")
    for a, b in zip(fp32.model.parameters(), bf16.model.parameters()):
        assert torch.equal(a, b)  # the same initial weights: only the forward precision differs
    stage2 = next(k for k, u in enumerate(fp32.plan) if u.stage == 2 and u.iteration == 1)
    for k in (0, 1, 2, stage2):
        torch.manual_seed(k)
        _, row32, _ = fp32.run_update(k)
        torch.manual_seed(k)
        _, row16, _ = bf16.run_update(k)
        # bf16 keeps 8 bits of mantissa: losses agree to a few percent, not to float32 rounding
        assert np.isfinite(row16["loss"]) and row16["loss"] == pytest.approx(row32["loss"], rel=0.05), k
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    moved = sum(not torch.equal(a, b) for a, b in zip(training("precision=bf16").model.parameters(),
                                                       bf16.model.parameters()))
    assert moved > 0
    buffers = [b for b in bf16.model.buffers() if b.is_floating_point()]
    assert all(b.dtype == torch.float32 and torch.isfinite(b).all() for b in buffers)


def test_bf16_evaluation_scores_like_fp32():
    tr = training()
    for k in range(6):
        tr.run_update(k)
    info = tr.model_file_info()
    fp32 = evaluate(tr.model, info, tr.sources, batch_size=8)
    bf16 = evaluate(tr.model, info, tr.sources, batch_size=8, precision="bf16")
    a, b = fp32["iterations"]["1"], bf16["iterations"]["1"]
    assert b["landmarks"]["nme"] == pytest.approx(a["landmarks"]["nme"], rel=0.05)
    assert abs(b["parsing"]["overall"] - a["parsing"]["overall"]) < 5.0
    assert abs(b["emotion"]["accuracy"] - a["emotion"]["accuracy"]) <= 100 / 6 + 1e-9  # at most one face of 6


def test_a_bad_precision_is_one_line():
    with pytest.raises(FacemtlError, match="precision"):
        load_config(SMOKE, ["precision=fp16"])
    with pytest.raises(FacemtlError, match="reader_threads"):
        load_config(SMOKE, ["reader_threads=0"])


def test_compile_keeps_parameter_names_and_trains(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(self))
    tr = training("compile=true")
    assert compiled == [tr.model]  # the trained model itself, in place: checkpoints keep their keys
    names = [n for n, _ in tr.model.named_parameters()]
    assert names and not any("_orig_mod" in n for n in names)


@pytest.mark.slow
def test_compiled_model_trains_like_eager():
    """Real torch.compile (inductor, needs a C++ compiler): one stage-1 update."""
    eager, compiled = training(), training("compile=true")
    torch.manual_seed(0)
    _, a, _ = eager.run_update(0)
    torch.manual_seed(0)
    _, b, _ = compiled.run_update(0)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_reader_threads_give_the_same_batches():
    tasks = tuple(get_tasks(["landmarks"]))
    faces = SyntheticFaces(12, style="snapshot", seed=4, size=96)
    batches = []
    for threads in (1, 2):
        src = Source(0, "faces", tasks, faces, [], 4, FaceCrop(size=64, augment=True, tasks=tasks), threads=threads)
        stream = BatchStream(src, seed=0, stream=0)
        batches.append([stream.batch(d) for d in range(4)])
    for one, two in zip(*batches):
        assert torch.equal(one["image"], two["image"]) and torch.equal(one["landmarks"], two["landmarks"])
