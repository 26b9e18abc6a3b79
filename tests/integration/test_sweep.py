"""`ftcli sweep` run for real: a sweep end to end, resuming after kill -9 and Ctrl-C, two workers
sharing one storage, and trials on two processes. Tiny model, a few hundred rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import SWEEP_SPACE as SPACE, run_here, sweep_config
from ftcli.cli import app


@pytest.mark.slow
def test_sweep_end_to_end_and_best_yaml_reproduces_the_best_trial(tiny_model, sweep_files, tmp_path):
    cfg = sweep_config(tiny_model, sweep_files, tmp_path, pruner="none")
    result = run_here("sweep", "-c", str(cfg), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    out = tmp_path / "run"
    assert summary["finished"] == 4 and summary["failed"] == 0 and summary["metric"] == "f1"
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3]
    # Prepared once, before the first trial; every trial hit that cache.
    assert result.stderr.count("data: tokenized") == 1
    assert [t["data_cache"] for t in summary["trials"]] == ["hit"] * 4
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]) == 1
    best = summary["best"]
    assert best["value"] == max(t["value"] for t in summary["trials"])
    # Every trial is an ordinary run folder; only the best keeps its model (keep_models: best).
    for t in summary["trials"]:
        run = Path(t["run_dir"])
        assert json.loads((run / "run.json").read_text())["status"] == "completed"
        assert (run / "model").is_dir() == (t["number"] == best["number"])
    assert (out / "sweep.png").stat().st_size > 10_000 and (out / "sweep.db").is_file()
    evaluated = CliRunner().invoke(app, ["eval", "-c", str(cfg), "--model", best["run_dir"], "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["f1"] == best["value"]
    # best.yaml is a plain config: training it again gives the best trial's number.
    again = run_here("train", "-c", str(out / "best.yaml"), "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["eval"]["f1"] == best["value"]
    # The same command again: the study is complete, nothing runs.
    from ftcli.console import Reporter
    from ftcli.sweeps import sweep

    rerun = sweep(cfg, reporter=Reporter(enabled=False))  # in this process: nothing trains
    assert len(rerun["trials"]) == 4


@pytest.mark.slow
def test_kill_9_mid_sweep_then_the_same_command_completes_the_study(tiny_model, sweep_files, tmp_path):
    # The default heartbeat (60 s): the rerun must see at once that the trial's process is gone.
    # one epoch a trial (13 steps): the learning rate is the only thing searched
    cfg = sweep_config(tiny_model, sweep_files, tmp_path, pruner="none",
                       space={"train.learning_rate": SPACE["train.learning_rate"]})
    doc = yaml.safe_load(cfg.read_text())
    doc["train"].update(log_every=1, checkpoint_every=4)
    cfg.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "sweep", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    second = tmp_path / "run" / "trials" / "0001" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (second.is_file() and len(second.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = run_here("sweep", "-c", str(cfg), "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "retrying failed trial(s) 1" in resumed.stderr
    summary = json.loads(resumed.stdout)
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert states[1] == "fail" and summary["finished"] == 4
    retry = [t for t in summary["trials"] if t["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["params"] == summary["trials"][1]["params"]
    assert retry[0]["state"] == "complete"
    # None ran twice: trial 0 finished before the kill and was not run again.
    assert json.loads((tmp_path / "run" / "trials" / "0000" / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_ctrl_c_then_sweep_resume_continues_that_study_and_that_trial(tiny_model, sweep_files, tmp_path):
    """What a user at a terminal does: start with their own flags, press Ctrl-C in trial 1, copy
    the one line printed. That command continues the same study (--trials 3 and --set kept), the
    interrupted trial continues from its checkpoint, no point is drawn twice, and keep_models:
    best leaves no checkpoints behind."""
    # one epoch a trial (13 steps): the learning rate is the only thing searched
    cfg = sweep_config(tiny_model, sweep_files, tmp_path, pruner="none", trials=8,
                       space={"train.learning_rate": SPACE["train.learning_rate"]})
    doc = yaml.safe_load(cfg.read_text())
    doc["train"].update(log_every=1, checkpoint_every=None)
    cfg.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "sweep", "-c", str(cfg), "--trials", "3", "--set",
                             "train.seed=7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = tmp_path / "run" / "trials" / "0001" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (second.is_file() and len(second.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    out = tmp_path / "run"
    assert err.splitlines()[-1] == f"sweep interrupted: the running trial wrote a checkpoint and continues from it; " \
                                   f"continue the study with: ftcli sweep --resume {out}"
    assert "Traceback" not in err and "failed with" not in err and "train --resume" not in err, err[-3000:]
    resumed = run_here("sweep", "--resume", str(out), "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["finished"] == 3  # --trials 3, not sweep.trials (8)
    assert yaml.safe_load((out / "sweep_config.yaml").read_text())["train"]["seed"] == 7  # --set kept
    retry = [t for t in summary["trials"] if t["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["state"] == "complete" and retry[0]["run_dir"] == str(out / "trials" / "0001")
    assert json.loads((out / "trials" / "0001" / "run.json").read_text())["resumed_from"], "retrained from scratch"
    drawn = [json.dumps(t["params"], sort_keys=True) for t in summary["trials"] if t["retry_of"] is None]
    assert len(drawn) == len(set(drawn)), drawn  # the continued study drew new points
    best = summary["best"]["run_dir"]
    for t in summary["trials"]:
        if t["run_dir"] != best:
            assert not (Path(t["run_dir"]) / "checkpoints").exists(), t


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(tiny_model, sweep_files, tmp_path):
    cfg = sweep_config(tiny_model, sweep_files, tmp_path, pruner="none", trials=4,
                       space={"train.learning_rate": SPACE["train.learning_rate"]})  # one epoch a trial
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "ftcli", "sweep", "-c", str(cfg), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-2000:] for o in outputs]
    summary = json.loads((tmp_path / "run" / "sweep.json").read_text())
    numbers = [t["number"] for t in summary["trials"] if t["state"] == "complete"]
    assert len(numbers) == len(set(numbers)) >= 4
    ran = [{int(x.split()[1]) for x in o[1].splitlines() if x.startswith("trial ") and " started:" in x} for o in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, on different trials


@pytest.mark.slow
def test_sweep_under_accelerate_launch_trains_each_trial_on_every_process(tiny_model, sweep_files, tmp_path):
    """2 processes (configs/accelerate/multi-cpu.yaml): the main process draws each trial's values
    and sends them; training refuses processes whose configs differ (test_multiprocess), so a
    trial that completes was trained by both with the same values. Pruning stops a hopeless trial
    (lr 1.0 diverges at once) at its first evaluation instead of training it to the end, on both
    processes at the same step (else they would hang in a collective), and the process group stays
    up from one trial to the next."""
    from conftest import accelerate_launch

    space = {"train.learning_rate": {"choices": [1e-7, 1.0]}}
    cfg = sweep_config(tiny_model, sweep_files, tmp_path, space=space, trials=3, pruner="median",
                       pruner_startup_trials=1, metric="loss")
    # seed 0 draws lr 1.0, 1e-7, 1.0: the third trial is worse than the median at its first evaluation
    result = accelerate_launch("sweep", "-c", str(cfg), "--json", "--set", "train.seed=0", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # printed once, by the main process
    assert summary["finished"] == 3 and summary["failed"] == 0
    assert result.stderr.count("sweep done:") == 1
    for t in summary["trials"]:
        metrics = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())
        assert metrics["processes"] == 2
        if t["state"] == "pruned":
            assert t["params"]["train.learning_rate"] == 1.0 and t["steps"] == 4 == metrics["steps"]
        else:
            assert t["steps"] == 7  # ceil(200 / (16 x 2 processes)): one epoch
    assert any(t["state"] == "pruned" for t in summary["trials"]), summary["trials"]
