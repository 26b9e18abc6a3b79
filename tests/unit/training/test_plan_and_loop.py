"""The step plan, the best-evaluation bookkeeping and the metrics log, tested directly."""

from __future__ import annotations

import json

import pytest

from ftcli.config import TrainConfig
from ftcli.training.loop import update_best
from ftcli.training.plan import make_plan
from ftcli.training.run_dir import MetricsLog
from ftcli.training.state import TrainState


@pytest.mark.parametrize("micro_batches, accumulation, processes, steps_per_epoch", [
    (12, 1, 1, 12),  # 96 rows / 8
    (13, 4, 1, 4),  # a last, short optimizer step counts
    (6, 1, 2, 6),  # processes share each micro batch: the step count does not change
])
def test_make_plan_counts_optimizer_steps(micro_batches, accumulation, processes, steps_per_epoch):
    plan = make_plan(TrainConfig(epochs=3, gradient_accumulation_steps=accumulation, batch_size=8),
                     micro_batches_per_epoch=micro_batches, processes=processes)
    assert plan.steps_per_epoch == steps_per_epoch and plan.total_steps == 3 * steps_per_epoch
    assert plan.epochs == 3 and not plan.capped
    assert plan.micro_batch == 8 * processes and plan.step_batch == 8 * processes * accumulation


def test_make_plan_warmup_and_max_steps():
    ratio = make_plan(TrainConfig(epochs=2, warmup_ratio=0.1), micro_batches_per_epoch=45, processes=1)
    assert ratio.total_steps == 90 and ratio.warmup_steps == 9
    capped = make_plan(TrainConfig(epochs=9, max_steps=50, warmup_steps=80), micro_batches_per_epoch=45, processes=1)
    # max_steps decides the length; the epochs it spans are rounded up; warm-up never outlasts the run
    assert (capped.total_steps, capped.epochs, capped.warmup_steps, capped.capped) == (50, 2, 50, True)


def test_update_best_tracks_the_best_and_counts_the_evaluations_without_one():
    state, t = TrainState(), TrainConfig(metric_for_best="f1")
    for step, f1, new in [(10, 0.5, True), (20, 0.7, True), (30, 0.6, False), (40, 0.7, False), (50, 0.8, True)]:
        state.step = step
        assert update_best(state, {"f1": f1, "loss": 1.0}, t) is new
        assert state.bad_evals == (0 if new else state.bad_evals)
        if step == 40:
            assert state.bad_evals == 2  # a tie is not an improvement
    assert (state.best.value, state.best.step, state.best.checkpoint) == (0.8, 50, "step-0000050")
    assert state.best.eval == {"f1": 0.8, "loss": 1.0} and state.bad_evals == 0


def test_update_best_minimizes_loss_and_does_nothing_without_a_metric():
    state, t = TrainState(step=1), TrainConfig(metric_for_best="loss")
    assert t.best_is_greater is False
    assert update_best(state, {"loss": 0.9}, t) is True
    state.step = 2
    assert update_best(state, {"loss": 1.2}, t) is False and state.best.value == 0.9
    untouched = TrainState(step=3)
    assert update_best(untouched, {"loss": 0.1}, TrainConfig()) is None
    assert untouched.best is None and untouched.bad_evals == 0


def test_truncate_after_keeps_what_the_checkpoint_covers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, enabled=True)
    for step in (5, 10, 15, 20):
        log.write({"type": "train", "step": step, "loss": 1.0 / step})
    log.write({"type": "eval", "step": 10, "accuracy": 0.5})
    with open(path, "a") as f:
        f.write('{"type": "train", "step": 2')  # half a line, as a kill -9 leaves it
    log.truncate_after(10)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in kept] == [("train", 5), ("train", 10), ("eval", 10)]
    MetricsLog(path, enabled=False).truncate_after(0)  # another process than the main one: leaves it
    assert len(path.read_text().splitlines()) == 3
    MetricsLog(tmp_path / "none.jsonl", enabled=True).truncate_after(3)  # nothing logged yet
    assert not (tmp_path / "none.jsonl").exists()
