"""Real multi-process runs: 2 CPU processes under `accelerate launch` (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, _free_port, accelerate_launch, make_rows, run_here, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


MRPC_VALIDATION = REPO / "data" / "mrpc" / "validation.jsonl"


@pytest.mark.parametrize("split, rows, eval_batch", [("seven", 7, 4)])
def test_eval_is_exact_across_processes(make_config, tiny_classifier, tmp_path, split, rows, eval_batch):
    """7 rows in one global batch of 8: Accelerate pads the second process's half with a repeated
    row; gather_for_metrics must drop exactly that one. (408 MRPC rows in batches of 128 split
    evenly, 12 + 12 at the end, so they pad nothing; 1,725 rows are predicted on 2 processes in
    test_ux.py.)"""
    seven = write_jsonl(tmp_path / "seven.jsonl", make_rows(7, seed=11))
    cfg = make_config(data={"files": {"train": str(MRPC_VALIDATION), "validation": str(MRPC_VALIDATION),
                                      "seven": str(seven)}},
                      model={"labels": ["no", "yes"]}, eval_batch_size=eval_batch)
    args = ("eval", "-c", str(cfg), "--model", str(tiny_classifier), "--split", split, "--json")
    one = run_here(*args)
    two = accelerate_launch(*args)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = json.loads(one.stdout), json.loads(two.stdout)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["samples"] == two["samples"] == rows
    for key in ("accuracy", "f1"):
        assert one[key] == two[key]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-6)


@pytest.mark.integration
def test_two_processes_of_4_train_like_one_of_8(make_config, tiny_model_no_dropout, tmp_path):
    """Same seed, no dropout: 2 processes x batch 4 see the same global batches (the sampler's
    order does not depend on the process count) and reach the same weights as 1 x 8, including the
    last, short batch (100 rows = 12 x 8 + 4). One process speaks and writes, and the model it
    exports evaluates on 1 process to the numbers the launch reported. So do two machines of one process each: two
    `accelerate launch --num_machines 2 --machine_rank 0|1` over loopback (one shared folder
    stands in for the shared filesystem)."""
    from safetensors.numpy import load_file

    from ftcli.training import train
    from ftcli.config import load_config
    from ftcli.console import Reporter

    files = {"train": write_jsonl(tmp_path / "train100.jsonl", make_rows(100, seed=4)),
             "validation": write_jsonl(tmp_path / "val.jsonl", make_rows(12, seed=5))}
    common = dict(data={"files": {k: str(v) for k, v in files.items()}},
                  model={"name_or_path": str(tiny_model_no_dropout)}, epochs=2, log_every=1)
    one_cfg = make_config("one.yaml", output_dir=str(tmp_path / "one"), **common)
    two_cfg = make_config("two.yaml", output_dir=str(tmp_path / "two"), batch_size=4, **common)
    one = train(load_config(one_cfg), reporter=Reporter(mode="quiet"))
    launched = accelerate_launch("train", "-c", str(two_cfg), "--json")
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads(launched.stdout)  # one JSON object: only the main process prints
    assert two["processes"] == 2 and two["global_batch"] == one["global_batch"] == 8
    assert two["steps"] == one["steps"] == two["planned_steps"] == 26  # ceil(100 / 8) x 2 epochs
    assert two["final_lr"] == 0.0  # the schedule ends at zero
    assert "4 per process x 2 process(es) x 1 accumulation = 8 global" in launched.stderr
    assert launched.stderr.count("ftcli train") == 1  # the summary came from one process only
    records = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["type"] == "eval"]) == 2  # one writer: no duplicated lines
    # the 2-process model evaluated by 1 process: the numbers the launch reported
    single = json.loads(run_here("eval", "-c", str(two_cfg), "--json").stdout)
    assert single["processes"] == 1 and single["samples"] == two["eval"]["samples"] == 12
    assert (single["accuracy"], single["f1"]) == (two["eval"]["accuracy"], two["eval"]["f1"])
    assert single["loss"] == pytest.approx(two["eval"]["loss"], rel=1e-6)

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if json.loads(x)["type"] == "train"]

    assert len(losses("one")) == 26
    assert losses("two") == pytest.approx(losses("one"), abs=1e-5)
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max(float(abs(w1[k] - w2[k]).max()) for k in w1)
    assert worst < 1e-4, worst

    machines_cfg = make_config("machines.yaml", output_dir=str(tmp_path / "machines"), batch_size=4, **common)
    port = str(_free_port())
    machines = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch",
         "--config_file", str(REPO / "configs" / "accelerate" / "multi-cpu.yaml"),
         "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
         "--main_process_ip", "127.0.0.1", "--main_process_port", port,
         "-m", "ftcli", "train", "-c", str(machines_cfg), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        for rank in (0, 1)]
    outputs = [m.communicate(timeout=600) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    result = json.loads(outputs[0][0])  # machine 0 holds the main process: it alone prints the result
    assert outputs[1][0].strip() == ""
    assert result["processes"] == 2 and result["global_batch"] == 8
    assert losses("machines") == pytest.approx(losses("one"), abs=1e-5)
    assert result["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=1e-6)
    assert result["eval"]["accuracy"] == one["eval"]["accuracy"]


def test_prepare_under_launch_builds_once_and_prints_once(make_config, tmp_path):
    cfg = make_config()
    launched = accelerate_launch("prepare", "-c", str(cfg))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("tokenized (first build)") + launched.stderr.count("tokenized (first build)") == 1
    built = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(built) == 1


def run_python(code: str) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh process, one thread per process (as accelerate_launch)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_notebook_launcher_runs_the_library_on_two_processes(make_config, tmp_path):
    """The course ends with notebook_launcher(training_function): ftcli's library takes a config."""
    cfg = make_config(epochs=1)
    code = (
        "from accelerate import notebook_launcher\n"
        "from ftcli import load_config, train\n"
        f"cfg = load_config({str(cfg)!r})\n"
        f"notebook_launcher(train, (cfg,), num_processes=2, use_port='{_free_port()}')\n"  # not 29500: tests run side by side
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == metrics["planned_steps"] == 6


def test_bad_input_is_reported_once_before_the_summary(make_config, tmp_path):
    """Every process meets the same bad input; the user reads it once. A refusal to overwrite a run
    comes before the start-up summary, not after it."""
    bad = accelerate_launch("train", "-c", str(make_config()), "--set", "train.epochs=0")
    assert bad.returncode != 0
    assert bad.stderr.count("error: ") == 1, bad.stderr[-3000:]
    assert "train.epochs: Input should be greater than or equal to 1" in bad.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    held = accelerate_launch("train", "-c", str(make_config()))
    assert held.returncode != 0
    assert held.stderr.count("error: ") == 1, held.stderr[-3000:]
    assert "already holds a run" in held.stderr and "ftcli train\n" not in held.stderr
    unlabeled = accelerate_launch("eval", "-c", str(make_config()), "--split", "test", "--model", str(tmp_path))
    assert unlabeled.returncode != 0 and unlabeled.stderr.count("error: ") == 1, unlabeled.stderr[-3000:]


def test_processes_given_different_configs_are_refused(make_config, tmp_path):
    """Two processes of one launch that read different settings (a config file that differs
    between machines; a sweep's values not shared) must not train two things at once."""
    cfg = make_config(epochs=1)
    code = (
        "from accelerate import PartialState, notebook_launcher\n"
        "from ftcli import load_config, train\n"
        "def differ():\n"
        "    rank = PartialState(cpu=True).process_index\n"
        f"    train(load_config({str(cfg)!r}, [f'train.learning_rate={{0.001 * (rank + 1)}}']))\n"
        f"notebook_launcher(differ, num_processes=2, use_port='{_free_port()}')\n"
    )
    out = run_python(code)
    assert out.returncode != 0
    assert ("the 2 processes of this launch were given different configs: train.learning_rate "
            "(process 0: 0.001, process 1: 0.002); give every process the same config file") in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "run" / "model").exists()


def test_fsdp_launch_config_on_the_cpu_is_refused_once(make_config, tmp_path):
    """configs/accelerate/fsdp.yaml on a machine without GPUs: one line, not silent DDP on the CPU."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "ftcli", "train", "-c", str(make_config())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    assert out.stderr.count("error: ") == 1, out.stderr[-3000:]
    assert "asks for FSDP, which shards over GPUs, but this run is on the CPU" in out.stderr
    assert not (tmp_path / "run").exists()

