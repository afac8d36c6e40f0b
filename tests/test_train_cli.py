"""``facemtl train`` / ``facemtl eval`` end to end, Ctrl-C + --resume, and bad input."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from facemtl.cli import main

SMOKE = "configs/ifan_synth_smoke.yaml"


def _facemtl(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "facemtl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_smoke_train_interrupt_resume_and_eval(tmp_path):
    run = tmp_path / "run"
    # 1) start the smoke run, Ctrl-C it after its second update
    proc = _facemtl("train", SMOKE, "--out", str(run))
    steps = run / "steps.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if steps.exists() and len(steps.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the smoke run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: saved a resumable state at update" in err and "Traceback" not in err
    state = json.loads((run / "train_state.json").read_text())
    assert 2 <= state["step"] < 12
    assert not (run / "metrics.json").exists()

    # 2) --resume (config taken from the run folder) finishes it
    proc = _facemtl("train", "--out", str(run), "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "run saved in" in out and "Iter1" in err
    rows = (run / "steps.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 13))  # every update logged once
    assert list((run / "tb").iterdir()), "TensorBoard events expected"

    # 3) eval writes the JSON of the paper's tables
    proc = _facemtl("eval", str(run), "--json", str(tmp_path / "out.json"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "mean NME" in out and "mouth_all" in out and "Iter0" in out and "Iter1" in out
    res = json.loads((tmp_path / "out.json").read_text())
    assert set(res) == {"iterations", "baselines"} and set(res["iterations"]) == {"0", "1"}
    assert set(res["baselines"]) == {"landmarks", "parsing", "emotion"}
    for it in res["iterations"].values():
        lm, pa, em = it["landmarks"], it["parsing"], it["emotion"]
        assert lm["nme"] > 0 and 0 <= lm["failure_rate"] <= 100 and len(lm["nme_per_point"]) == 5
        assert all(0 <= v <= 100 for v in pa["f1"].values())
        assert 0 <= pa["overall"] <= 100 or math.isnan(pa["overall"])
        assert 0 <= em["accuracy"] <= 100 and 0 <= em["mean_class_accuracy"] <= 100
        assert sum(map(sum, em["confusion"])) == 6  # n_test of the emotion source
    # evaluation of the checkpoint equals the metrics the trainer wrote at the end
    # training scores its model through the CPU speed paths (channels-last), `facemtl eval` loads
    # the same weights into the eager layout: equal up to float rounding
    assert _close(res, json.loads((run / "metrics.json").read_text()))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "no/such.yaml", "--out", "{tmp}/a"], "facemtl: error: config file not found: no/such.yaml"),
        (["train", SMOKE, "--out", "{tmp}/b", "--set", "schedule.lr"], "facemtl: error: bad --set 'schedule.lr': expected KEY=VALUE"),
        (["train", SMOKE, "--out", "{tmp}/c", "--set", "schedule.lrr=1"], "unknown key 'schedule.lrr' (did you mean 'schedule.lr'?)"),
        (["train", SMOKE, "--out", "{tmp}/d", "--resume"], "facemtl: error: nothing to resume in"),
        (["train", "--out", "{tmp}/e", "--resume"], "facemtl: error: nothing to resume in"),
        (["train", "--resume"], "facemtl: error: --resume needs --out DIR"),
        (["eval", "{tmp}/nothing"], "facemtl: error: checkpoint not found"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    proc = _facemtl("train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip() == f"facemtl: error: config file not found: {tmp_path / 'missing.yaml'}"


def test_help_matches_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--set", "--resume", "--stop-after", "config"):
        assert opt in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for opt in ("--json", "--split", "checkpoint"):
        assert opt in text


def test_default_run_folder_is_named_after_the_config():
    from facemtl.engine.cli import _default_run_dir

    assert _default_run_dir("configs/ifan_synth_smoke.yaml").parent.name == "runs"
    assert _default_run_dir("configs/ifan_synth_smoke.yaml").name.startswith("ifan_synth_smoke-")
    assert _default_run_dir(None).name.startswith("ifan_synth_default-")


def _close(a, b, rel=1e-6) -> bool:
    """Nested results equal, numbers up to a relative ``rel`` (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return b == pytest.approx(a, rel=rel, abs=1e-9)
    return a == b
