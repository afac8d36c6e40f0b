"""A training run's folder under failures: a checkpoint is one consistent set of files, one
run per folder (a lock), every mistake found before any work or file and reported in one line,
logs that hold each update once after a kill, and files with the umask's permissions.

The runs are the tiny iFAN of tests/test_engine.py (11 updates, a few seconds)."""

import csv
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from facemtl.cli import main
from facemtl.config import config_from_dict
from facemtl.engine import loop
from facemtl.engine.checkpoint import STATE_JSON, STATE_WEIGHTS, load_train_state
from facemtl.engine.loop import train
from facemtl.errors import FacemtlError
from facemtl.files import FolderLock, atomic_write_bytes

TINY = dict(growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4,
            reencoder_channels=2, points_hidden=8, category_hidden=8)
SMOKE = "configs/ifan_synth_smoke.yaml"
CHECKPOINT = ("model.safetensors", "model.json", STATE_WEIGHTS, STATE_JSON)


def _tiny(**over):
    data = {
        "model": {"name": "ifan", "kwargs": {"iterations": 1, **TINY}},
        "input_size": 64,
        "data": [
            {"tasks": ["landmarks"], "style": "wild", "n_train": 6, "n_test": 3, "seed": 1, "batch_size": 3},
            {"tasks": ["parsing"], "style": "studio", "n_train": 4, "n_test": 3, "seed": 2, "batch_size": 2},
            {"tasks": ["emotion"], "style": "webcam", "n_train": 4, "n_test": 3, "seed": 3, "batch_size": 4},
        ],
        "schedule": {"pretrain_epochs": 1, "epochs": 1, "rounds": 2, "lr": 1e-3, "lr_end": 1e-4},
        "logging": {"log_every": 1, "tensorboard": False, "progress": False},
    }
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return data


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny()))
    return str(path)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _one_line_error(capsys, *argv) -> str:
    code, err = _cli(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("facemtl: error: ")
    return err.strip()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- 1: a checkpoint is one consistent set -------------------------------------------------


def test_resume_refuses_a_state_json_from_another_save(tmp_path, one_thread):
    cfg = config_from_dict(_tiny())
    run = tmp_path / "mixed"
    train(cfg, run, quiet=True, stop_after=2)
    old = (run / STATE_JSON).read_bytes()
    train(cfg, run, resume=True, quiet=True, stop_after=4)
    (run / STATE_JSON).write_bytes(old)  # tensors of step 4 beside the JSON of step 2
    with pytest.raises(FacemtlError) as info:
        train(cfg, run, resume=True, quiet=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{run / STATE_WEIGHTS} does not belong with {run / STATE_JSON}" in msg
    assert "come from different saves" in msg
    assert json.loads((run / STATE_JSON).read_text())["step"] == 2  # refused: nothing trained or rewritten


def test_model_json_records_the_sha256_of_its_weights(tmp_path, one_thread):
    from facemtl.models.checkpoint import load_model

    cfg = config_from_dict(_tiny())
    run = train(cfg, tmp_path / "run", quiet=True, stop_after=2)
    info = json.loads((run / "model.json").read_text())
    assert info["weights_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    state = json.loads((run / STATE_JSON).read_text())
    assert state["tensors_sha256"] == hashlib.sha256((run / STATE_WEIGHTS).read_bytes()).hexdigest()
    step2 = (run / "model.safetensors").read_bytes()
    train(cfg, run, resume=True, quiet=True, stop_after=4)
    load_model(run)
    (run / "model.safetensors").write_bytes(step2)  # same network, weights of another save
    with pytest.raises(FacemtlError) as info:
        load_model(run)
    assert str(info.value).startswith(f"{run / 'model.safetensors'} does not belong with {run / 'model.json'}: "
                                      f"its SHA-256 is {hashlib.sha256(step2).hexdigest()[:16]}...")


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path, tiny_yaml, capsys,
                                                                              monkeypatch, one_thread):
    from facemtl import files

    run = tmp_path / "run"
    assert _cli(capsys, "train", tiny_yaml, "--out", run, "--stop-after", 2, "--quiet")[0] == 0
    before = {name: (run / name).read_bytes() for name in CHECKPOINT}
    real = files._write_temp

    def full(path, data):  # the disk fills up at the state's JSON, the last file of the set
        if path.name == STATE_JSON:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(files, "_write_temp", full)
    err = _one_line_error(capsys, "train", "--out", run, "--resume", "--stop-after", 4, "--quiet")
    assert err == f"facemtl: error: cannot write {run / STATE_JSON}: No space left on device"
    assert {name: (run / name).read_bytes() for name in CHECKPOINT} == before  # the step-2 checkpoint, whole
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")] and not (run / FolderLock.LOCK_NAME).exists()
    monkeypatch.undo()
    assert load_train_state(run)[1]["step"] == 2
    assert _cli(capsys, "train", "--out", run, "--resume", "--quiet")[0] == 0
    assert [int(r["step"]) for r in _rows(run / "steps.csv")] == list(range(1, 12))


# -- 2: one run per folder -----------------------------------------------------------------

_HOLD = textwrap.dedent("""
    import sys, time
    from facemtl.files import FolderLock
    FolderLock(sys.argv[1], "facemtl train").acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_folder_in_use_is_refused_and_a_dead_holder_s_lock_is_replaced(tmp_path, one_thread):
    cfg = config_from_dict(_tiny())
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FacemtlError) as info:
            train(cfg, run, quiet=True)
        assert str(info.value) == (f"{run} is in use by facemtl train (pid {holder.pid} on {socket.gethostname()}, "
                                   f"since {json.loads((run / 'run.lock').read_text())['since']}): wait for it to "
                                   f"end, or delete {run / 'run.lock'} if that process is gone")
        assert os.listdir(run) == ["run.lock"]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: its lock stays behind
        holder.wait()
    assert json.loads((run / "run.lock").read_text())["pid"] == holder.pid
    train(cfg, run, quiet=True, stop_after=2)  # a dead pid on this host: the lock is stale
    assert not (run / "run.lock").exists(), "the lock is released when the run ends"
    assert load_train_state(run)[1]["step"] == 2


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "pid-only"])
def test_a_lock_file_is_judged_by_its_pid_and_host(tmp_path, monkeypatch, flock):
    from facemtl import files

    if not flock:  # as on a system without fcntl (Windows)
        monkeypatch.setattr(files, "fcntl", None)
    run = tmp_path / "run"
    run.mkdir()
    here = socket.gethostname()
    (run / "run.lock").write_text(json.dumps({"pid": os.getppid(), "host": here}))
    with pytest.raises(FacemtlError, match=f"in use by a process \\(pid {os.getppid()} on"):
        FolderLock(run).acquire()
    (run / "run.lock").write_text(json.dumps({"pid": 12345, "host": "another-host"}))
    with pytest.raises(FacemtlError, match="pid 12345 on another-host"):  # a pid of another host means nothing here
        FolderLock(run).acquire()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    (run / "run.lock").write_text(json.dumps({"pid": int(gone.stdout), "host": here}))
    with FolderLock(run, "test") as lock:  # stale: replaced
        assert lock.held and json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(FacemtlError, match=f"in use by test \\(pid {os.getpid()} on {here}"):
            FolderLock(run).acquire() if flock else _other_process_lock(run)
    assert os.listdir(run) == []


def _other_process_lock(run):
    code = ("import sys; from facemtl.files import FolderLock; import facemtl.files as f; f.fcntl = None; "
            "FolderLock(sys.argv[1]).acquire()")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, check=False)
    raise FacemtlError(proc.stderr.strip().splitlines()[-1])


def test_a_resumed_run_hides_later_tensorboard_events(tmp_path, monkeypatch, one_thread):
    import torch.utils.tensorboard as tb

    made = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            made.append(purge_step)

        def add_scalar(self, *a):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tb, "SummaryWriter", Writer)
    cfg = config_from_dict(_tiny(logging={"tensorboard": True}))
    train(cfg, tmp_path / "run", quiet=True, stop_after=4)
    train(cfg, tmp_path / "run", resume=True, quiet=True, stop_after=7)
    assert made == [None, 5]  # events from step 5 on (update 5 onwards) are purged on resume


@pytest.mark.parametrize("leftover, shown", [
    ({"steps.csv": "step,stage\n1,1\n"}, "steps.csv"),  # a stray log: its header would drop columns
    ({"config.json": "{}", "steps.csv": "step\n", "tb/events": ""}, "config.json, steps.csv, tb/"),  # killed early
    ({"notes.txt": "mine"}, "notes.txt"),
])
def test_a_new_run_refuses_a_folder_that_holds_no_resumable_run(tmp_path, leftover, shown):
    run = tmp_path / "run"
    for name, text in leftover.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    with pytest.raises(FacemtlError) as info:
        train(config_from_dict(_tiny()), run, quiet=True)
    assert str(info.value) == (f"{run} is not empty and holds no resumable run (it has {shown}): a new run needs "
                               "an empty or new --out folder")
    assert {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()} == set(leftover)  # untouched


def test_a_csv_written_by_another_run_is_refused_not_cut(tmp_path):
    from facemtl.engine.logging import RunLogger

    (tmp_path / "steps.csv").write_text("step,stage\n1,1\n")
    log = RunLogger(tmp_path, tensorboard=False)
    with pytest.raises(FacemtlError, match="steps.csv: its header \\(step,stage\\) lacks this run's column\\(s\\) loss"):
        log.step(2, {"stage": 1, "loss": 0.5})


# -- 5: one line, before any work or file --------------------------------------------------


@pytest.mark.parametrize("setting, message", [
    ("seed=-1", "bad value for 'seed': expected an integer in 0..4294967295, got -1"),
    ("data.1.seed=-3", "bad value for 'data.1.seed': expected an integer in 0..4294967295, got -3"),
    ("optimiser.alpha=-5", "bad value for 'optimiser.alpha': expected a number in [0, 1), got -5.0"),
    ("optimiser.alpha=5", "bad value for 'optimiser.alpha': expected a number in [0, 1), got 5.0"),
    ("input_size=100000", "bad value for 'input_size': expected at most 1024 pixels, got 100000"),
    ("input_size=32", "bad value for 'input_size': expected at least 64 pixels with synthetic sources, got 32"),
    ("data.0.n_train=1000000000", "bad value for 'data.0.n_train': expected an integer in 1..1_000_000, got 1000000000"),
    ("data.2.n_test=20000000", "bad value for 'data.2.n_test': expected an integer in 0..1_000_000, got 20000000"),
    ("input_size=100", "ifan: input_size must be divisible by 8, got 100"),  # the model's own rule, built first
    ("schedule.iterations=3", ("bad value for 'schedule.iterations': 3, but model 'ifan' is built with 1 "
                               "refinement iteration(s) (model.kwargs.iterations): set it to at most 1")),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, tiny_yaml, capsys, setting, message):
    run = tmp_path / "run"
    err = _one_line_error(capsys, "train", tiny_yaml, "--out", run, "--set", setting, "--quiet")
    assert message in err
    assert not run.exists()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1\n# d\xe9j\xe0 vu\n".encode("latin-1"))
    err = _one_line_error(capsys, "train", path, "--out", tmp_path / "run")
    assert err == f"facemtl: error: {path}:2: not UTF-8 text (byte 0xe9 at offset 11); save the config as UTF-8"


def test_out_must_be_a_writable_folder(tmp_path, tiny_yaml, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _one_line_error(capsys, "train", tiny_yaml, "--out", afile)
    assert err == f"facemtl: error: --out {afile}: is a file, expected a run folder"
    err = _one_line_error(capsys, "train", tiny_yaml, "--out", afile / "run")
    assert err == f"facemtl: error: --out {afile / 'run'}: {afile} is a file, expected a folder"

    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: have the probe meet what anyone else would
        import tempfile

        def refuse(*a, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    built = []
    monkeypatch.setattr(loop.Training, "__init__", lambda *a, **k: built.append(1) or None)
    err = _one_line_error(capsys, "train", tiny_yaml, "--out", locked / "run")
    assert err == f"facemtl: error: --out {locked / 'run'}: cannot write in {locked} (Permission denied)"
    assert not built, "the folder is checked before any work"
    locked.chmod(0o755)
    assert os.listdir(locked) == []


def _saved_run(tmp_path, tiny_yaml, capsys):
    run = tmp_path / "run"
    assert _cli(capsys, "train", tiny_yaml, "--out", run, "--stop-after", 2, "--quiet")[0] == 0
    return run


@pytest.mark.parametrize("edit, message", [
    ({"step": -1}, "'step' must be the number of updates done, an integer >= 0, got -1"),
    ({"step": "two"}, "'step' must be the number of updates done, an integer >= 0, got 'two'"),
    ({"step": 99}, "'step' 99 is beyond the run's 'total_steps' 11"),
    ({"step": None}, "missing key 'step' (the number of updates done, an integer >= 0)"),
    ({"optimizer": None}, "missing key 'optimizer' (the optimiser's state, a mapping with 'param_groups')"),
    ({"total_steps": None}, "missing key 'total_steps'"),
    ({"tensors_sha256": None}, "missing key 'tensors_sha256' (the SHA-256 of train_state.safetensors"),
])
def test_resume_with_a_bad_state_json_is_one_line(tmp_path, tiny_yaml, capsys, one_thread, edit, message):
    run = _saved_run(tmp_path, tiny_yaml, capsys)
    state = json.loads((run / STATE_JSON).read_text())
    for key, value in edit.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    (run / STATE_JSON).write_text(json.dumps(state))
    before = (run / "steps.csv").read_text()
    err = _one_line_error(capsys, "train", "--out", run, "--resume", "--quiet")
    assert err.startswith(f"facemtl: error: {run / STATE_JSON}: {message}")
    assert (run / "steps.csv").read_text() == before and not (run / "run.lock").exists()


def test_resume_with_a_garbage_config_json_is_one_line(tmp_path, tiny_yaml, capsys, one_thread):
    run = _saved_run(tmp_path, tiny_yaml, capsys)
    (run / "config.json").write_bytes(b"\x00not json")
    err = _one_line_error(capsys, "train", "--out", run, "--resume")
    assert err.startswith(f"facemtl: error: {run / 'config.json'}: malformed JSON")
    err = _one_line_error(capsys, "train", tiny_yaml, "--out", run, "--resume")
    assert err.startswith(f"facemtl: error: {run / 'config.json'}: malformed JSON")


def test_ctrl_c_during_start_up_leaves_nothing(tmp_path, tiny_yaml, capsys, monkeypatch):
    from facemtl.engine.logging import RunLogger

    def interrupted(self, message):  # after config.json and the logs exist, before the first update
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLogger, "info", interrupted)
    run = tmp_path / "run"
    code, err = _cli(capsys, "train", tiny_yaml, "--out", run)
    assert code == 130 and err.strip() == "facemtl: interrupted"
    assert not run.exists()
    run.mkdir()  # a folder given empty stays, empty
    code, err = _cli(capsys, "train", tiny_yaml, "--out", run)
    assert code == 130 and os.listdir(run) == []


# -- 4: a diverged loss names the batch ----------------------------------------------------


def test_a_diverged_loss_names_the_batch_source_and_samples(tmp_path, monkeypatch, one_thread):
    from facemtl.data.synth import SyntheticFaces
    from facemtl.engine.hybrid import HybridMode

    cfg = config_from_dict(_tiny())
    faces = SyntheticFaces(6, style="wild", seed=1, size=64)
    named = [{**faces[i], "meta": {**faces[i]["meta"], "id": f"face{i}.png"}} for i in range(6)]
    datasets = [(named, named[:3])] + [(SyntheticFaces(4, style=s, seed=k, size=64),) * 2
                                       for k, s in ((2, "studio"), (3, "webcam"))]
    real = HybridMode.update

    def nan_at_second(self, model, optimizer, batch, u):
        row, losses = real(self, model, optimizer, batch, u)
        return ({**row, "loss": float("nan")} if u.step == 1 else row), losses

    monkeypatch.setattr(HybridMode, "update", nan_at_second)
    with torch.random.fork_rng(devices=[]):
        stream = loop.Training(cfg, datasets).mode.streams[0]
    first = [int(i) for i in stream.indices(1)[2]]  # update 2 = the stream's second batch
    with pytest.raises(FacemtlError) as info:
        train(cfg, tmp_path / "run", datasets=datasets, quiet=True)
    assert str(info.value) == ("training diverged at update 2: the loss is nan on the batch of source 0 (synth), "
                               "training samples " + ", ".join(f"{i} (face{i}.png)" for i in first)
                               + "; try a lower schedule.lr")
    assert not (tmp_path / "run" / "run.lock").exists()


# -- 9: logs after a kill ------------------------------------------------------------------


def test_resume_after_a_kill_logs_each_update_once_and_removes_temp_files(tmp_path, one_thread):
    cfg = config_from_dict(_tiny())
    full = train(cfg, tmp_path / "full", quiet=True)
    part = tmp_path / "part"
    train(cfg, part, quiet=True, stop_after=4)
    saved = {name: (part / name).read_bytes() for name in CHECKPOINT}
    train(cfg, part, resume=True, quiet=True, stop_after=7)
    # killed after update 7 with the step-4 checkpoint the newest: rows 5..7 stay in the logs,
    # and an atomic write left its temporary file
    for name, data in saved.items():
        (part / name).write_bytes(data)
    (part / ".train_state.json.k1ll3d_x.tmp").write_text("{")
    assert [int(r["step"]) for r in _rows(part / "steps.csv")] == list(range(1, 8))
    train(cfg, part, resume=True, quiet=True)

    def no_time(rows):
        return [{k: v for k, v in r.items() if k != "step_seconds"} for r in rows]

    assert no_time(_rows(part / "steps.csv")) == no_time(_rows(full / "steps.csv"))  # 1..11, each once
    assert _rows(part / "epochs.csv") == _rows(full / "epochs.csv")
    assert sorted(p for p in os.listdir(part) if p.startswith(".")) == []


def test_resume_of_a_finished_run_writes_its_final_rows_once(tmp_path, one_thread):
    cfg = config_from_dict(_tiny())
    run = train(cfg, tmp_path / "run", quiet=True)
    before = _rows(run / "epochs.csv")
    train(cfg, run, resume=True, quiet=True)
    assert _rows(run / "epochs.csv") == before


# -- 10: permissions -----------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
        plain = tmp_path / "plain.csv"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "f.json").st_mode & 0o777 == mode == os.stat(plain).st_mode & 0o777
