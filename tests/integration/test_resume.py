"""Checkpoints: kill -9 at random points then resume gives bit-identical weights (1 and 2
processes), SIGINT/SIGTERM, corrupt checkpoints, rotation, best model, early stopping, output_dir
safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import accelerate_launch, run_cli, run_here
from ftcli.training import checkpoint
from ftcli.files import sha256_file

pytestmark = pytest.mark.slow

CKPT = ["--set", "train.checkpoint_every=5", "--set", "train.log_every=1", "--set", "train.save_total_limit=3"]


def train_here(config: Path, *sets: str, **kwargs):
    """`ftcli train` through the library in this process (no interpreter start-up): the same
    checks and messages, as an FtcliError instead of exit code 2. `sets`: --set options."""
    from ftcli import load_config, train
    from ftcli.console import Reporter

    overrides = [a for a in sets if a != "--set"]
    kwargs.setdefault("reporter", Reporter(enabled=False))
    return train(load_config(config, overrides), **kwargs)


def refusal(config: Path, *sets: str, **kwargs) -> str:
    from ftcli.errors import FtcliError

    with pytest.raises(FtcliError) as caught:
        train_here(config, *sets, **kwargs)
    return str(caught.value)


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def assert_identical(a: Path, b: Path) -> None:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ: {different[:5]}"


def train_log(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["type"] == "train"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_model, task_files):
    """An uninterrupted 1-process run that the interrupted ones must reproduce exactly (trained
    in this process: the same arithmetic as `ftcli train`, without an interpreter start)."""
    import yaml

    from conftest import config_dict

    work = tmp_path_factory.mktemp("reference")
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(tiny_model, task_files, work)))
    one = run_here("train", "-c", str(cfg), *CKPT, "--set", f"train.output_dir={work / 'one'}")
    assert one.returncode == 0, one.stderr
    return {"config": cfg, "one": work / "one"}


@pytest.fixture(scope="session")
def reference_two(reference):
    """The same run on 2 processes: made only where a 2-process test runs (xdist may put the
    tests of this module on either worker)."""
    out = reference["config"].parent / "two"
    two = accelerate_launch("train", "-c", str(reference["config"]), *CKPT, "--set", f"train.output_dir={out}")
    assert two.returncode == 0, two.stderr[-3000:]
    return out


# Fault points: a crash right after an optimizer step, and one in the middle of writing a
# checkpoint (all processes have saved their state; the main one has not finished the folder).
STEPS = random.Random(7).sample([s for s in range(2, 95) if s % 5], 2)  # 1 process: 96 steps


@pytest.mark.parametrize("fault", [f"step:{STEPS[0]}", f"step:{STEPS[1]}", "checkpoint-write:45"])
def test_kill_and_resume_one_process_is_bit_identical(reference, tmp_path, fault):
    out = ["--set", f"train.output_dir={tmp_path / 'run'}"]
    killed = run_cli("train", "-c", str(reference["config"]), *CKPT, *out, env={"FTCLI_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL
    if fault.startswith("checkpoint-write"):
        leftovers = list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
        assert leftovers, "the fault should have left a half-written checkpoint"
    resumed = run_here("train", "-c", str(reference["config"]), *CKPT, *out, "--resume", "auto", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "/checkpoints/step-" in json.loads(resumed.stdout)["resumed_from"]
    assert_identical(reference["one"], tmp_path / "run")
    # The log reads as one run: every step once, with the reference's losses.
    assert train_log(tmp_path / "run") == train_log(reference["one"])
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


@pytest.mark.multiprocess
@pytest.mark.parametrize("fault", ["checkpoint-write:35@0"])  # killed mid-write; a killed step: 1 process
def test_kill_and_resume_two_processes_is_bit_identical(reference, reference_two, tmp_path, fault):
    out = ["--set", f"train.output_dir={tmp_path / 'run'}"]
    killed = accelerate_launch("train", "-c", str(reference["config"]), *CKPT, *out, env={"FTCLI_FAULT": fault})
    assert killed.returncode != 0
    resumed = accelerate_launch("train", "-c", str(reference["config"]), *CKPT, *out, "--resume", "auto", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["resumed_from"]
    assert_identical(reference_two, tmp_path / "run")
    assert train_log(tmp_path / "run") == train_log(reference_two)


def test_sigkill_from_outside_at_a_random_moment(reference, tmp_path):
    """A real `kill -9` of the whole process group, at whatever point training has reached."""
    out = ["--set", f"train.output_dir={tmp_path / 'run'}"]
    log = tmp_path / "run" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "train", "-c", str(reference["config"]), *CKPT, *out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = random.Random(3).randint(20, 80)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= target:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = run_here("train", "-c", str(reference["config"]), *CKPT, *out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(reference["one"], tmp_path / "run")


def _start_and_signal(args: list[str], log: Path, signum: int, after_lines: int) -> tuple[int, str]:
    """Start `ftcli train ARGS`, wait until metrics.jsonl has `after_lines` lines, send `signum`."""
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= after_lines) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_checkpoints_and_says_how_to_resume(make_config, tmp_path, signum, code):
    """The printed command, followed verbatim, resumes *this* run: one started with --set overrides
    (here its output_dir) that the command does not repeat."""
    cfg = make_config(epochs=400, checkpoint_every=None, log_every=1)
    run = tmp_path / "elsewhere"
    log = run / "metrics.jsonl"
    returncode, stderr = _start_and_signal(["-c", str(cfg), "--set", f"train.output_dir={run}"], log, signum, 5)
    assert returncode == code, stderr[-2000:]
    assert "interrupted at step" in stderr
    hint = stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert hint == f"ftcli train --resume {run}"
    ckpts = checkpoint.complete(run)
    assert len(ckpts) == 1 and checkpoint.verify(ckpts[0]) is None  # written although checkpoint_every is null
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    step = checkpoint.read_state(ckpts[0]).state.step
    assert not (tmp_path / "run").exists()  # the config's own output_dir was never touched

    # Verbatim (argv of the hint), interrupted again a few steps later: it continued this run.
    returncode, again = _start_and_signal(hint.split()[2:], log, signal.SIGTERM, step + 3)
    assert returncode == 143, again[-2000:]
    assert f"resumed from {ckpts[0]}: step {step}/4800" in again
    assert not (tmp_path / "run").exists()
    later = checkpoint.read_state(checkpoint.complete(run)[-1]).state.step
    assert later > step

    # What a resumed run reports is what this invocation did.
    done = run_here("train", "--resume", str(run), "--set", f"train.max_steps={later + 4}", "--allow-changes", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"] == later + 4 and result["steps_this_run"] == 4
    assert f"done: 4 steps (resumed at step {later}, now {later + 4}) in " in done.stderr


def test_resume_run_dir_with_another_config_is_refused(make_config, tmp_path):
    (tmp_path / "other" / "checkpoints").mkdir(parents=True)
    result = run_here("train", "-c", str(make_config()), "--resume", str(tmp_path / "other"))
    assert result.returncode == 2
    assert result.stderr == (f"error: --resume {tmp_path / 'other'}: belongs to the run in {str(tmp_path / 'other')!r}, "
                             f"but train.output_dir is {str(tmp_path / 'run')!r}; leave out --config to resume that "
                             f"run with its saved config, or --set train.output_dir={tmp_path / 'other'}\n")
    missing = run_here("train", "--resume", "auto")
    assert missing.returncode == 2 and "give --config FILE, or --resume RUN_DIR" in missing.stderr


def test_resume_refuses_a_changed_config_naming_the_field(reference, tmp_path):
    import shutil

    out = ["--set", f"train.output_dir={tmp_path / 'run'}"]
    shutil.copytree(reference["one"], tmp_path / "run")  # a finished run: its checkpoints resume
    changed = refusal(reference["config"], *CKPT, *out, "--set", "train.learning_rate=0.01", resume="auto")
    assert "was written by a different run: train.learning_rate (0.002 -> 0.01)" in changed
    assert "--allow-changes" in changed
    data_changed = refusal(reference["config"], *CKPT, *out, "--set", "data.max_length=16", resume="auto")
    assert "data.max_length (48 -> 16)" in data_changed and "the prepared data (cache key" in data_changed
    forced = train_here(reference["config"], *CKPT, *out, "--set", "train.learning_rate=0.01", resume="auto",
                        allow_changes=True)
    assert forced["steps"] == 96 and forced["steps_this_run"] >= 1


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(reference, tmp_path):
    out = ["--set", f"train.output_dir={tmp_path / 'run'}"]
    run_cli("train", "-c", str(reference["config"]), *CKPT, *out, env={"FTCLI_FAULT": "step:22"})
    ckpts = checkpoint.complete(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step-0000010", "step-0000015", "step-0000020"]
    weights_file = ckpts[-1] / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-10])  # truncated
    from io import StringIO

    from ftcli.console import Reporter

    said = StringIO()
    bad = refusal(reference["config"], *CKPT, *out, resume=str(ckpts[-1]), reporter=Reporter(mode="plain", err=said))
    assert bad.startswith(f"--resume {ckpts[-1]}: checkpoint is not usable: model.safetensors is truncated")
    # Verified before anything heavy: no data summary, no model, no start-up table first.
    assert said.getvalue() == ""
    train_here(reference["config"], *CKPT, *out, resume="auto", reporter=Reporter(mode="plain", err=said))
    assert "step-0000020 is damaged (model.safetensors is truncated" in said.getvalue()
    assert "resumed from" in said.getvalue() and "step-0000015" in said.getvalue()
    assert_identical(reference["one"], tmp_path / "run")


def test_rotation_keeps_the_newest_and_the_best(make_config, tmp_path):
    # "best" = the highest validation loss: an early evaluation, long before the newest two.
    cfg = make_config(checkpoint_every=6, eval_every=6, save_total_limit=2, metric_for_best="loss",
                      greater_is_better=True, final_model="best")
    result = run_here("train", "-c", str(cfg), "--json")
    assert result.returncode == 0, result.stderr
    result = json.loads(result.stdout)
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["type"] == "eval"]
    best = max(evals, key=lambda e: e["loss"])
    assert best["step"] < 90
    best_name = checkpoint.name_for(best["step"])
    names = [c.name for c in checkpoint.complete(tmp_path / "run")]
    assert names == [best_name, "step-0000090", "step-0000096"]
    assert result["best"]["step"] == best["step"]
    assert result["exported"] == {"from": "best", "step": best["step"], "checkpoint": best_name}
    assert result["eval"]["loss"] == best["loss"]
    import torch
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "run" / "model" / "model.safetensors")
    kept = load_file(tmp_path / "run" / "checkpoints" / best_name / "model.safetensors")
    assert all(torch.equal(exported[k], kept[k]) for k in exported)


def test_early_stopping_with_patience(make_config, tmp_path):
    cfg = make_config(metric_for_best="loss", greater_is_better=True, early_stopping_patience=2)
    result = run_here("train", "-c", str(cfg), "--json")
    assert result.returncode == 0, result.stderr
    result = json.loads(result.stdout)
    assert result["stopped"] == "early_stopping"
    assert result["steps"] < result["planned_steps"]
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "eval"]
    losses = [e["loss"] for e in evals]
    best_at = max(range(len(losses)), key=lambda i: losses[i])
    assert len(losses) == best_at + 1 + 2  # stopped after 2 evaluations without a higher loss


def test_output_dir_holding_a_run_needs_resume_or_overwrite(make_config, tmp_path):
    cfg = make_config(epochs=1)
    train_here(cfg)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    again = refusal(cfg)
    assert f"train.output_dir '{tmp_path / 'run'}' already holds a run" in again
    assert "--resume auto" in again and "--overwrite" in again
    train_here(cfg, overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # --overwrite removes only ftcli's files


def test_unit_rotate_and_find(tmp_path):
    out = tmp_path / "run"
    for step in (5, 10, 15, 20):
        folder = checkpoint.root(out) / checkpoint.name_for(step)
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w" * step)
        (folder / checkpoint.STATE_FILE).write_text(json.dumps(
            {"step": step, "files": {"model.safetensors": [step, sha256_file(folder / "model.safetensors")]}}))
    (checkpoint.root(out) / ".tmp-step-0000025").mkdir()
    assert checkpoint.find(out, "auto", print).name == "step-0000020"
    removed = checkpoint.rotate(out, keep=2, protect={"step-0000005"})
    assert [p.name for p in removed] == ["step-0000010"]  # newest 2 (15, 20) + the best (5) stay
    assert [p.name for p in checkpoint.complete(out)] == ["step-0000005", "step-0000015", "step-0000020"]
    assert not (checkpoint.root(out) / ".tmp-step-0000025").exists()
    (checkpoint.root(out) / "step-0000020" / "model.safetensors").write_bytes(b"x" * 20)
    logs = []
    assert checkpoint.find(out, "auto", logs.append).name == "step-0000015"
    assert "does not match its checksum" in logs[0]


def test_disk_full_during_a_checkpoint_says_so_and_removes_the_partial_one(make_config, tmp_path, small_disk):
    mount, fill = small_disk
    cfg = make_config(output_dir=str(mount / "run"), max_steps=6, checkpoint_every=2)
    fill(96 * 1024)  # the config and logs fit; a checkpoint (~300 KB) does not
    result = run_here("train", "-c", str(cfg), "--quiet")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no space left on the disk holding the checkpoints in {mount / 'run' / 'checkpoints'}: "
                      "free some space, or set train.checkpoint_every: null (or a larger interval), or a "
                      "train.output_dir on another disk"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "inline_container" not in result.stderr
    assert not list((mount / "run" / "checkpoints").glob(".tmp-*"))


def test_checkpoint_files_load_without_pickle(make_config, tmp_path):
    """Everything a checkpoint holds loads with torch.load(weights_only=True) or is safetensors."""
    import torch

    cfg = make_config(epochs=1, checkpoint_every=6)
    assert run_here("train", "-c", str(cfg)).returncode == 0
    ckpt = checkpoint.complete(tmp_path / "run")[-1]
    assert (ckpt / "model.safetensors").is_file() and not list(ckpt.glob("pytorch_model*.bin"))
    for name in ("optimizer.bin", "scheduler.bin"):
        torch.load(ckpt / name, weights_only=True)
    from accelerate.utils import load

    load(ckpt / "random_states_0.pkl")  # accelerate's loader: weights_only=True with numpy allow-listed
    model_files = [p.name for p in (tmp_path / "run" / "model").iterdir()]
    assert "model.safetensors" in model_files and not [n for n in model_files if n.endswith((".bin", ".pt", ".pkl"))]
