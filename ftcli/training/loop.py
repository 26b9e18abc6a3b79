"""The training loop: `fit()` reads top to bottom; `after_step()` evaluates, tracks the best
evaluation, decides on stopping and checkpoints, as scheduled."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from ftcli.config import TrainConfig
from ftcli.training import checkpoint, run_dir
from ftcli.training.plan import Plan, batch_loss
from ftcli.training.setup import Run
from ftcli.training.state import Best, TrainState


def fit(run: Run, state: TrainState) -> dict[str, Any]:
    """Train from `state` (fresh, or read from a checkpoint) to `plan.total_steps` optimizer steps.
    Evaluates and checkpoints on schedule; stops early when told to (patience, SIGINT/SIGTERM)."""
    from ftcli.training.optim import release_grad_scale

    acc, model, optimizer, scheduler, plan, t = run.accelerator, run.model, run.optimizer, run.scheduler, run.plan, run.cfg.train
    log = run_dir.MetricsLog(run.output_dir / "metrics.jsonl", acc.is_main_process)
    window = Window(acc, plan, rows=run.prepared.split_info(run.cfg.data.train_split).rows)
    start, at_start, stopping = time.perf_counter(), (state.step, state.samples, state.tokens), None
    touched: list = []  # input ids of the micro batches since the last optimizer step
    model.train()
    with run.reporter.progress(plan.total_steps, "train", every=t.log_every, completed=state.step) as bar:
        while state.step < plan.total_steps and stopping is None:
            epoch = state.epoch
            run.train_dl.set_epoch(epoch)
            # Resuming mid-epoch: the same remaining batches, in order.
            loader = acc.skip_first_batches(run.train_dl, state.batch_in_epoch) if state.batch_in_epoch else run.train_dl
            bar.set_description(plan.epoch_label(epoch))
            for index, batch in enumerate(loader, start=state.batch_in_epoch):
                touched.append(batch["input_ids"])
                with acc.accumulate(model):
                    labels, weights = batch.pop("labels"), batch.pop("weights", None)
                    loss, real = batch_loss(model(**batch).logits, labels, index, plan, acc.process_index,
                                            window.rows, run.prepared.is_regression, run.class_weights,
                                            multi_label=run.prepared.is_multi_label, weights=weights)
                    acc.backward(loss)
                    clip(run, touched)
                    optimizer.step()
                    release_grad_scale(optimizer)
                    if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                window.add(loss, batch["attention_mask"], real)
                state.batch_in_epoch = index + 1
                if not acc.sync_gradients:
                    continue
                touched.clear()
                state.step += 1
                if state.step % t.log_every == 0 or state.step == plan.total_steps:
                    window.flush(state, scheduler.get_last_lr()[0], log, bar, t.report_to)
                with window.paused():  # throughput counts training time only
                    stopping = after_step(run, state, log, epoch, end_of_epoch=index + 1 == plan.micro_batches_per_epoch)
                checkpoint.fault_point("step", state.step, acc.process_index)
                if stopping or state.step >= plan.total_steps:
                    break
            else:
                state.epoch, state.batch_in_epoch = epoch + 1, 0  # ran out of batches

    seconds = time.perf_counter() - start
    state.seconds += seconds
    return _fit_result(run, state, stopping, seconds, max(seconds - window.paused_seconds, 1e-9), at_start)


def clip(run: Run, touched: list) -> None:
    """Clip the gradient norm once per optimizer step (see ftcli.training.optim). `touched`: the input ids
    of the step's micro batches, for the row-sparse embedding norm."""
    import torch

    from ftcli.training import optim

    acc, max_norm = run.accelerator, run.cfg.train.max_grad_norm
    if not acc.sync_gradients or run.clipping == "off":
        return
    if run.clipping == "folded":
        ids = torch.cat([t.flatten() for t in touched]) if run.sparse_embedding is not None else None
        optim.fold_clipping(run.model, run.optimizer, max_norm, embedding=run.sparse_embedding, input_ids=ids)
    else:
        acc.clip_grad_norm_(run.model.parameters(), max_norm)


def after_step(run: Run, state: TrainState, log, epoch: int, *, end_of_epoch: bool) -> str | None:
    """Evaluate, decide on stopping and checkpoint, as scheduled after optimizer step `state.step`.
    Returns why training stops (`early_stopping`, `signal`, or `pruned` when a sweep's `on_eval`
    says so) or None."""
    t, step, stopping = run.cfg.train, state.step, None
    last = step >= run.plan.total_steps

    def due(every) -> bool:
        return every == "epoch" and end_of_epoch or isinstance(every, int) and step % every == 0

    if run.eval_dl is not None and (due(t.eval_every) or last):
        result = _evaluate(run, state, epoch=round(step / run.plan.steps_per_epoch, 4), log=log)
        if update_best(state, result, t) is False and t.early_stopping_patience:
            if state.bad_evals >= t.early_stopping_patience:
                stopping = "early_stopping"
        if _main_says_stop(run, step, result):
            stopping = "pruned"
    # Processes agree on a signal at steps they all know (no sync at every step): log lines,
    # checkpoints, the last step, and a stop decided anyway.
    agree_now = step % t.log_every == 0 or last or stopping is not None or \
        t.checkpoint_every is not None and due(t.checkpoint_every)
    if run.stop is not None and run.stop.agreed(run.accelerator, due=agree_now):
        stopping = "signal"
    if end_of_epoch:
        state.epoch, state.batch_in_epoch = epoch + 1, 0
    if stopping == "signal" or t.checkpoint_every is not None and due(t.checkpoint_every):
        _save_checkpoint(run, state)
    return stopping


def _main_says_stop(run: Run, step: int, result: dict[str, Any]) -> bool:
    """`on_eval`'s answer on the main process, on every process: a sweep's pruner lives in the
    main process only, and all processes must stop at the same step."""
    wants = bool(run.on_eval(step, result)) if run.on_eval is not None else False
    if run.accelerator.num_processes == 1:
        return wants
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([wants], from_process=0)[0]


class Window:
    """Loss and token counts since the last log line, added up on the device and read only when a
    line is written (one collective per log line, not per step)."""

    def __init__(self, acc, plan: Plan, rows: int):
        import torch

        self.acc, self.plan, self.rows = acc, plan, rows
        self.loss = torch.zeros((), device=acc.device)
        self.tokens = torch.zeros((), device=acc.device, dtype=torch.long)
        self.batches = self.real_rows = self.padded = 0
        self.start = time.perf_counter()
        self.smoothed: float | None = None
        self.paused_seconds = 0.0

    def add(self, loss, attention_mask, real: int) -> None:
        self.loss += loss.detach().float()
        self.tokens += attention_mask[:real].sum()
        self.padded += real * attention_mask.shape[1]
        self.batches += 1
        self.real_rows += real

    def flush(self, state: TrainState, lr: float, log, bar, report_to: list[str]) -> None:
        import torch

        acc = self.acc
        stats = acc.reduce(torch.stack([
            self.loss / self.batches, self.tokens.float(), torch.tensor(float(self.real_rows), device=acc.device),
            torch.tensor(float(self.padded), device=acc.device),
        ]), reduction="sum")
        seconds = max(time.perf_counter() - self.start, 1e-9)
        mean_loss = float(stats[0]) / acc.num_processes
        state.samples += int(stats[2])
        state.tokens += int(stats[1])
        state.padded_tokens += int(stats[3])
        self.smoothed = mean_loss if self.smoothed is None else 0.8 * self.smoothed + 0.2 * mean_loss
        record = {"loss": mean_loss, "lr": lr, "samples_per_s": float(stats[2]) / seconds,
                  "tokens_per_s": float(stats[1]) / seconds}
        log.write({"type": "train", "step": state.step, "epoch": round(state.step / self.plan.steps_per_epoch, 4), **record})
        if report_to:
            acc.log({f"train/{k}": v for k, v in record.items()}, step=state.step)
        bar.update(state.step - bar.done, loss=self.smoothed, lr=lr, samples_s=float(stats[2]) / seconds)
        self.loss.zero_()
        self.tokens.zero_()
        self.batches = self.real_rows = self.padded = 0
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Time inside (evaluation, checkpoints) is not training time."""
        began = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - began
            self.paused_seconds += spent
            self.start += spent


def _fit_result(run: Run, state: TrainState, stopping: str | None, seconds: float, training_seconds: float,
                at_start: tuple[int, int, int]) -> dict[str, Any]:
    steps_before, samples_before, tokens_before = at_start
    trained = state.step > steps_before
    return {
        "steps": state.step,
        "steps_this_run": state.step - steps_before,  # after a resume: what this invocation did
        "seconds_this_run": round(seconds, 3),
        "epochs": round(state.step / run.plan.steps_per_epoch, 4),
        "samples": state.samples,
        "tokens": state.tokens,
        "padding": round(1 - state.tokens / state.padded_tokens, 4) if state.padded_tokens else None,
        "seconds": round(state.seconds, 3),
        # Throughput of this session's optimizer steps, evaluation and checkpoint time excluded.
        "train_seconds": round(training_seconds, 3),
        "samples_per_s": round((state.samples - samples_before) / training_seconds, 2) if trained else None,
        "tokens_per_s": round((state.tokens - tokens_before) / training_seconds, 1) if trained else None,
        "final_lr": run.scheduler.get_last_lr()[0],
        "stopped": stopping or "completed",
    }


def _evaluate(run: Run, state: TrainState, *, epoch: float, log) -> dict[str, Any]:
    from ftcli.evaluation import few_positives_warning, run_eval
    from ftcli.training.fastops import standard_attention

    start = time.perf_counter()
    with standard_attention(run.accelerator.unwrap_model(run.model)):
        run.last_eval = run_eval(run.accelerator, run.model, run.eval_dl, run.metric,
                                 regression=run.prepared.is_regression, keep_predictions=True,
                                 multi_label=run.prepared.is_multi_label, threshold=run.cfg.eval.threshold,
                                 pooling=run.cfg.eval.window_pooling)
    if run.prepared.is_multi_label and (warning := few_positives_warning(
            run.last_eval.predictions, run.last_eval.references, run.cfg.eval.threshold, run.eval_split)):
        run.reporter.warn(f"step {state.step}: {warning}")
    result = run.last_eval.values()
    result["seconds"] = round(time.perf_counter() - start, 3)
    record = {"type": "eval", "step": state.step, "epoch": epoch, "split": run.eval_split, **result}
    log.write(record)
    if run.cfg.train.report_to:
        run.accelerator.log({f"eval/{k}": v for k, v in result.items()}, step=state.step)
    state.last_eval = record
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("samples", "windows", "seconds"))
    read = f"{result['samples']} documents in {result['windows']} windows" if "windows" in result \
        else f"{result['samples']} rows"
    run.reporter.info(f"eval step {state.step} (epoch {epoch:g}): {shown}  ({read}, {result['seconds']:.1f}s)")
    return result


def update_best(state: TrainState, result: dict[str, Any], t: TrainConfig) -> bool | None:
    """Track the best evaluation by `metric_for_best`; True when this one is the new best. Every
    process computes the same value from the same gathered predictions, so early-stopping
    decisions agree without a collective."""
    if t.metric_for_best is None:
        return None
    value = result[t.metric_for_best]
    best = state.best
    better = best is None or (value > best.value if t.best_is_greater else value < best.value)
    if better:
        state.best = Best(t.metric_for_best, value, state.step, checkpoint.name_for(state.step), result)
        state.bad_evals = 0
    else:
        state.bad_evals += 1
    return better


def _save_checkpoint(run: Run, state: TrainState) -> Path:
    acc = run.accelerator
    path = checkpoint.save(acc, run.output_dir, state, run.fingerprint())
    if acc.is_main_process:
        removed = checkpoint.rotate(run.output_dir, run.cfg.train.save_total_limit,
                                    protect={state.best.checkpoint} if state.best else set())
        run_dir.write_run_json(run.output_dir, "running", checkpoint=str(path))
        run.reporter.info(f"checkpoint {path}" + (f" (removed {', '.join(p.name for p in removed)})" if removed else ""))
    return path
