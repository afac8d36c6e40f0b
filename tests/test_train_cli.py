"""``facemtl train`` / ``facemtl eval`` end to end, Ctrl-C + --resume, and bad input."""

import json
import math
import re
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
    assert re.search(r"rendered \d+ synthetic faces in [\d.]+ s", err)  # up front, said in the log
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
    assert err.strip().startswith(f"facemtl: error: config file not found: {tmp_path / 'missing.yaml'} (or give the "
                                  "name of a config shipped with facemtl: ")
    assert "finetune_bundled" in err and len(err.strip().splitlines()) == 1


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


def test_epoch_means_agree_with_the_step_rows_across_a_resume(tmp_path, capsys, one_thread):
    import csv
    import re

    run = tmp_path / "run"
    # 6 stage-1 updates, then one stage-2 epoch of 2 rounds x 3 tasks x I = 1, 2: 18 updates;
    # stopped at 9, inside that epoch
    args = ["train", SMOKE, "--out", str(run), "--set", "model.kwargs.iterations=2",
            "--set", "logging.tensorboard=false", "--set", "logging.report=false", "--set", "logging.log_every=1"]
    assert main([*args, "--stop-after", "9", "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    # training ends with the evaluation tables, trivial baselines included: no `facemtl eval` needed
    err = capsys.readouterr().err
    assert all(row in err for row in ("Iter0", "Iter2", "mean shape", "all background", "majority ("))
    steps = list(csv.DictReader(open(run / "steps.csv")))
    assert [int(r["step"]) for r in steps] == list(range(1, 19))
    checked = set()
    for e in csv.DictReader(open(run / "epochs.csv")):
        m = re.fullmatch(r"mean_(\w+?)_(loss(?:_iter\d)?)", e["name"])
        if not m:
            continue
        task, column = m.groups()
        values = [float(r[column]) for r in steps if (r["stage"], r["epoch"], r["task"]) == (e["stage"], e["epoch"], task)
                  and r[column] != "nan"]
        assert values and abs(float(e["value"]) - sum(values) / len(values)) <= 1e-6, (e, values)
        checked.add((e["stage"], task, column))
    tasks = ("landmarks", "parsing", "emotion")
    assert checked == {("1", t, "loss") for t in tasks} | {("2", t, c) for t in tasks
                                                          for c in ("loss", "loss_iter0", "loss_iter1", "loss_iter2")}


def test_progress_bar_shows_stage_2_losses_per_iteration():
    from facemtl.engine.loop import _BarLosses

    bar = _BarLosses()
    assert bar.update(1, {"task": "landmarks", "iteration": 0, "loss_iter0": 0.5, "loss_iter1": math.nan},
                      {"landmarks": 0.5}) == "stage 1: landmarks 0.5"
    assert bar.update(1, {"task": "emotion", "iteration": 0, "loss_iter0": 1.9}, {"emotion": 1.9}) \
        == "stage 1: landmarks 0.5, emotion 1.9"
    # stage 2: per iteration, not their sum; stage 1's numbers are not carried over
    text = bar.update(2, {"task": "landmarks", "iteration": 1, "loss_iter0": 0.12, "loss_iter1": 0.1,
                          "loss_iter2": math.nan}, {"landmarks": 0.22})
    assert text == "stage 2: landmarks I0 0.12 I1 0.1"
    text = bar.update(2, {"task": "landmarks", "iteration": 2, "loss_iter0": 0.22, "loss_iter1": 0.2,
                          "loss_iter2": 0.09}, {"landmarks": 0.51})
    assert text == "stage 2: landmarks I0 0.13 I1 0.11 I2 0.09"  # running means (0.9 decay)
    # joint training (stage 0: no stages) names no task in its row: one loss per task
    assert _BarLosses().update(0, {"stage": 0, "loss": 3.0, "landmarks_loss": 1.0}, {"landmarks": 1.0, "emotion": 2.0}) \
        == "landmarks 1, emotion 2"
