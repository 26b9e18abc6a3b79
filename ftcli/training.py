"""`ftcli train`: the Hugging Face course's Accelerate loop, made configurable.

`setup()` builds everything (accelerator, data, model, optimizer, schedule); `fit()` is the loop,
top to bottom; `train()` ties them together and writes the outputs. The same code runs on one
CPU, one or several GPUs, several machines or a TPU, under `accelerate launch -m ftcli train`.

Outputs in `train.output_dir`:
    model/          the final model and tokenizer (safetensors; `from_pretrained` loads it)
    checkpoints/    resumable checkpoints (`ftcli train --resume auto`), see ftcli.checkpoint
    config.yaml     the resolved config of the run
    run.json        status: running / interrupted / completed, and where to resume from
    metrics.jsonl   one JSON object per log step and per evaluation
    metrics.json    the final evaluation and training totals
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftcli.config import Config, load_config
from ftcli.console import Reporter, format_duration
from ftcli import checkpoint
from ftcli.data import atomic_write_text
from ftcli.errors import EXIT_SIGINT, EXIT_SIGTERM, FtcliError, TrainingInterrupted


@dataclass
class Plan:
    """Step arithmetic, computed once from the prepared dataloader (the truth on N processes)."""

    processes: int
    batch_size: int  # per process
    accumulation: int
    batches_per_epoch: int  # per process, = global batches per epoch (batches are split)
    updates_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes * self.accumulation


def make_plan(cfg: Config, batches_per_epoch: int, processes: int) -> Plan:
    t = cfg.train
    updates = math.ceil(batches_per_epoch / t.gradient_accumulation_steps)
    total = t.max_steps if t.max_steps is not None else t.epochs * updates
    warmup = t.warmup_steps if t.warmup_ratio is None else math.ceil(t.warmup_ratio * total)
    return Plan(
        processes=processes,
        batch_size=t.batch_size,
        accumulation=t.gradient_accumulation_steps,
        batches_per_epoch=batches_per_epoch,
        updates_per_epoch=updates,
        total_steps=total,
        epochs=math.ceil(total / updates),
        warmup_steps=min(warmup, total),
    )


@dataclass
class Run:
    """Everything `fit()` needs, built by `setup()`."""

    cfg: Config
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    train_dl: Any
    eval_dl: Any | None
    metric: Any
    metric_name: str
    prepared: Any
    plan: Plan
    reporter: Reporter
    tokenizer: Any
    output_dir: Path
    eval_split: str | None = None
    resume_from: Path | None = None
    stop: StopFlag | None = None


# --------------------------------------------------------------------------------------------
# Setup


def make_optimizer(cfg: Config, model, device_type: str):
    """AdamW; no weight decay on biases and norm weights (1-d tensors). Fused kernels where
    torch has them (CUDA, and CPU since torch 2.4): one kernel over all parameters instead of a
    loop of small ones, which matters at batch 8 where the step over the 30k x 384 word
    embedding is a large share of each step."""
    import torch

    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
    if t.fused_optimizer and device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass  # a device/dtype without a fused kernel: the default implementation is fine
    return torch.optim.AdamW(groups, **kwargs)


def train_dataloader(cfg: Config, accelerator, ds, prepared):
    import torch
    from torch.utils.data import DataLoader

    from ftcli.data import Collator, LengthGroupedSampler
    from ftcli.distributed import dataloader_kwargs, pad_multiple, padding_mode

    global_batch = cfg.train.batch_size * accelerator.num_processes
    sampler = LengthGroupedSampler(ds["length"], global_batch, cfg.train.seed, group=cfg.train.group_by_length)
    collator = Collator(
        pad_token_id=prepared.pad_token_id, padding=padding_mode(cfg, accelerator), max_length=prepared.max_length,
        buckets=tuple(cfg.data.pad_buckets), multiple_of=pad_multiple(cfg, accelerator),
        regression=prepared.is_regression,
    )
    return DataLoader(
        ds.select_columns(prepared.manifest["model_input_names"] + ["labels", "length"]),
        batch_size=global_batch,
        sampler=sampler,
        collate_fn=collator,
        generator=torch.Generator(),  # see eval_dataloader: keep the global RNG for dropout only
        **dataloader_kwargs(cfg, accelerator),
    )


def setup(cfg: Config, accelerator, reporter: Reporter) -> Run:
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from ftcli import data, evaluation, modeling

    from ftcli.distributed import single_process_launch_hint

    t = cfg.train
    reporter.enabled = reporter.enabled and accelerator.is_main_process
    if hint := single_process_launch_hint(accelerator):
        reporter.warn(hint)
    set_seed(t.seed)

    # One process tokenizes (or finds the cache); the others wait on the cache's file lock, then
    # load the result. A lock rather than `main_process_first`: a barrier would time out when a
    # first tokenization of a large dataset outlasts the collective timeout; a lock never does.
    prepared = data.prepare(cfg, log=reporter.info)
    if accelerator.is_main_process:
        _report_cache(reporter, prepared)
    # From here on the config holds the values ftcli resolved: the run's config.yaml and the
    # checkpoints' fingerprint say what was used, not `null`.
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": prepared.max_length})})
    train_info = prepared.split_info(cfg.data.train_split)
    if not train_info["labeled"]:
        raise FtcliError(f"{train_info['source']}: the training split has no labels")
    eval_split = cfg.data.validation_split if cfg.data.validation_split in prepared.manifest["splits"] else None
    if eval_split and not prepared.split_info(eval_split)["labeled"]:
        eval_split = None
    if eval_split is None:
        reporter.warn(f"no labelled split {cfg.data.validation_split!r}: training without evaluation")

    tokenizer = modeling.load_tokenizer(cfg)
    model = modeling.load_model(cfg, prepared.label_names)
    if t.fast_dropout and accelerator.device.type == "cpu" and cfg.model.attn_implementation == "auto":
        from ftcli import fastops

        fastops.install(model)
    if t.compile:
        model = torch.compile(model, dynamic=True)
    optimizer = make_optimizer(cfg, model, accelerator.device.type)
    train_dl = train_dataloader(cfg, accelerator, prepared.split(cfg.data.train_split), prepared)
    eval_dl = None
    if eval_split:
        eval_dl = evaluation.eval_dataloader(
            cfg, accelerator, prepared.split(eval_split), prepared.pad_token_id, prepared.max_length,
            prepared.is_regression,
        )
    name = evaluation.metric_name(cfg, prepared.label_names)
    metric = evaluation.load_metric(name) if eval_dl is not None else None
    if t.metric_for_best is not None:
        if eval_dl is None:
            raise FtcliError("train.metric_for_best: needs a labelled validation split (data.validation_split)")
        choices = [*evaluation.metric_keys(name), "loss"]
        if t.metric_for_best not in choices:
            raise FtcliError(f"train.metric_for_best: {t.metric_for_best!r} is not computed by metric {name!r}; "
                             f"choose one of {', '.join(choices)}")

    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)
    plan = make_plan(cfg, len(train_dl), accelerator.num_processes)
    scheduler = get_scheduler(
        t.scheduler, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps
    )
    # Prepared so that save_state/load_state carry it; it steps once per call
    # (step_scheduler_with_optimizer=False), and fit() calls it once per optimizer step.
    scheduler = accelerator.prepare(scheduler)

    run = Run(
        cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
        train_dl=train_dl, eval_dl=eval_dl, metric=metric, metric_name=name, prepared=prepared, plan=plan,
        reporter=reporter, tokenizer=tokenizer, output_dir=Path(t.output_dir), eval_split=eval_split,
    )
    _report_start(run, eval_split, sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
                  torch.get_num_threads())
    return run


def _report_cache(reporter: Reporter, prepared) -> None:
    splits = ", ".join(f"{s} {i['rows']:,}" for s, i in prepared.manifest["splits"].items())
    if prepared.hit:
        reporter.info(f"data: cache hit {prepared.path} ({splits})")
    else:
        reporter.info(f"data: tokenized in {prepared.seconds:.1f}s ({prepared.why_missed}) -> {prepared.path} ({splits})")


def _report_start(run: Run, eval_split: str | None, n_params: int, threads: int) -> None:
    from ftcli.distributed import precision_label

    cfg, acc, plan, prep = run.cfg, run.accelerator, run.plan, run.prepared
    labels = prep.label_names or ["(regression)"]
    run.reporter.summary("ftcli train", [
        ("model", f"{cfg.model.name_or_path} ({n_params / 1e6:.1f}M parameters)"),
        ("labels", ", ".join(labels)),
        ("data", f"{cfg.data.train_split} {prep.split_info(cfg.data.train_split)['rows']:,} rows"
                 + (f", {eval_split} {prep.split_info(eval_split)['rows']:,} rows" if eval_split else "")),
        ("device", f"{acc.device.type} x {acc.num_processes} process(es)"
                   + (f" ({acc.distributed_type.value})" if acc.num_processes > 1 else "")
                   + (f", {threads} threads each" if acc.device.type == "cpu" else "")),
        ("precision", precision_label(acc, cfg)),
        ("batch", f"{plan.batch_size} per process x {plan.processes} process(es) x {plan.accumulation} "
                  f"accumulation = {plan.global_batch} global"),
        ("steps", f"{plan.updates_per_epoch} per epoch x {plan.epochs} epoch(s) = {plan.total_steps} optimizer steps"),
        ("schedule", f"{cfg.train.scheduler}, warmup {plan.warmup_steps} steps, peak lr {cfg.train.learning_rate}"),
        ("output", str(run.output_dir)),
    ])


# --------------------------------------------------------------------------------------------
# The loop


def fit(run: Run, state: dict[str, Any]) -> dict[str, Any]:
    """Train from `state` (fresh, or read from a checkpoint) to `plan.total_steps` optimizer steps.
    Evaluates and checkpoints on schedule; stops early when told to (patience, SIGINT/SIGTERM)."""
    import torch

    acc, model, optimizer, scheduler = run.accelerator, run.model, run.optimizer, run.scheduler
    cfg, plan, t = run.cfg, run.plan, run.cfg.train
    log = MetricsLog(run.output_dir / "metrics.jsonl", acc.is_main_process)
    rows, regression = len(run.train_dl.dataset), run.prepared.is_regression
    step = state["step"]
    window_loss = torch.zeros((), device=acc.device)
    window_tokens = torch.zeros((), device=acc.device, dtype=torch.long)
    window_batches, window_rows, window_padded = 0, 0, 0
    window_start = train_start = time.perf_counter()
    steps_at_start, samples_at_start, tokens_at_start = step, state["samples"], state["tokens"]
    smoothed, stopping, paused = None, None, 0.0  # paused: seconds spent evaluating and checkpointing
    touched: list = []  # input ids of the micro-batches since the last optimizer step
    model.train()

    with run.reporter.progress(plan.total_steps, "train", every=t.log_every, completed=step) as bar:
        while step < plan.total_steps and stopping is None:
            epoch = state["epoch"]
            run.train_dl.set_epoch(epoch)
            loader = run.train_dl
            if state["batch_in_epoch"]:  # resuming mid-epoch: the same remaining batches, in order
                loader = acc.skip_first_batches(run.train_dl, state["batch_in_epoch"])
            bar.set_description(f"epoch {epoch + 1}/{plan.epochs}")
            for index, batch in enumerate(loader, start=state["batch_in_epoch"]):
                touched.append(batch["input_ids"])
                with acc.accumulate(model):
                    labels = batch.pop("labels")
                    logits = model(**batch).logits
                    loss, real = batch_loss(logits, labels, index, plan, acc.process_index, rows, regression)
                    acc.backward(loss)
                    if acc.sync_gradients and t.max_grad_norm is not None:
                        clip_gradients(acc, model, optimizer, t.max_grad_norm, torch.cat([ids.flatten() for ids in touched]))
                    optimizer.step()
                    release_grad_scale(optimizer)
                    if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    touched.clear()
                window_loss += loss.detach().float()
                window_tokens += batch["attention_mask"][:real].sum()
                window_padded += real * batch["attention_mask"].shape[1]
                window_batches += 1
                window_rows += real
                state["batch_in_epoch"] = index + 1
                if not acc.sync_gradients:
                    continue

                step += 1
                state["step"] = step
                end_of_epoch = index + 1 == plan.batches_per_epoch
                if step % t.log_every == 0 or step == plan.total_steps:
                    # One collective per log line (not per step): mean loss and global counts.
                    stats = acc.reduce(torch.stack([
                        window_loss / window_batches, window_tokens.float(),
                        torch.tensor(float(window_rows), device=acc.device),
                        torch.tensor(float(window_padded), device=acc.device),
                    ]), reduction="sum")
                    seconds = max(time.perf_counter() - window_start, 1e-9)
                    mean_loss = float(stats[0]) / acc.num_processes
                    state["samples"] += int(stats[2])
                    state["tokens"] += int(stats[1])
                    state["padded_tokens"] = state.get("padded_tokens", 0) + int(stats[3])
                    smoothed = mean_loss if smoothed is None else 0.8 * smoothed + 0.2 * mean_loss
                    lr = scheduler.get_last_lr()[0]
                    record = {"loss": mean_loss, "lr": lr, "samples_per_s": float(stats[2]) / seconds,
                              "tokens_per_s": float(stats[1]) / seconds}
                    log.write({"type": "train", "step": step, "epoch": round(step / plan.updates_per_epoch, 4), **record})
                    if t.report_to:
                        acc.log({f"train/{k}": v for k, v in record.items()}, step=step)
                    bar.update(step - bar.done, loss=smoothed, lr=lr, samples_s=float(stats[2]) / seconds)
                    window_loss.zero_()
                    window_tokens.zero_()
                    window_batches, window_rows, window_padded, window_start = 0, 0, 0, time.perf_counter()

                last = step >= plan.total_steps
                due = (lambda every: every == "epoch" and end_of_epoch or isinstance(every, int) and step % every == 0)
                pause_start = time.perf_counter()
                if run.eval_dl is not None and (due(t.eval_every) or last):
                    result = _evaluate(run, state, epoch=round(step / plan.updates_per_epoch, 4), step=step, log=log)
                    if _update_best(state, result, step, t) is False and t.early_stopping_patience:
                        if state["bad_evals"] >= t.early_stopping_patience:
                            stopping = "early_stopping"
                if run.stop is not None and run.stop.agreed(acc):
                    stopping = "signal"
                if end_of_epoch:
                    state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
                if stopping == "signal" or t.checkpoint_every is not None and due(t.checkpoint_every):
                    _save_checkpoint(run, state)
                paused += time.perf_counter() - pause_start
                window_start += time.perf_counter() - pause_start  # throughput counts training time only
                checkpoint.fault_point("step", step, acc.process_index)
                if last or stopping:
                    break
            else:
                state["epoch"], state["batch_in_epoch"] = epoch + 1, 0  # ran out of batches

    seconds = time.perf_counter() - train_start
    training_seconds = max(seconds - paused, 1e-9)
    state["seconds"] = state.get("seconds", 0.0) + seconds
    done_samples, done_tokens = state["samples"] - samples_at_start, state["tokens"] - tokens_at_start
    return {
        "steps": step,
        "steps_this_run": step - steps_at_start,  # after a resume: what this invocation did
        "seconds_this_run": round(seconds, 3),
        "epochs": round(step / plan.updates_per_epoch, 4),
        "samples": state["samples"],
        "tokens": state["tokens"],
        "padding": round(1 - state["tokens"] / state["padded_tokens"], 4) if state.get("padded_tokens") else None,
        "seconds": round(state["seconds"], 3),
        # Throughput of this session's optimizer steps, evaluation and checkpoint time excluded.
        "train_seconds": round(training_seconds, 3),
        "samples_per_s": round(done_samples / training_seconds, 2) if step > steps_at_start else None,
        "tokens_per_s": round(done_tokens / training_seconds, 1) if step > steps_at_start else None,
        "final_lr": run.scheduler.get_last_lr()[0],
        "stopped": stopping or "completed",
    }


def clip_gradients(acc, model, optimizer, max_norm: float, input_ids=None) -> None:
    """Clip the gradient norm to `max_norm`, as `accelerator.clip_grad_norm_` does.

    With torch's fused AdamW on one device or under DDP (gradients already all-reduced), the
    clip coefficient is handed to the optimizer kernel as its `grad_scale` (the AMP hook: it
    divides each gradient as it reads it), which saves a full read-modify-write pass over the
    gradients (~4 ms of a ~130 ms MiniLM step on CPU; clipping is active on ~3/4 of steps).
    Elsewhere (FSDP, DeepSpeed, XLA, fp16 with its own grad scaler) Accelerate clips.

    On one process, given the step's `input_ids`, the word-embedding gradient's norm is taken
    over the rows those ids touched: every other row is exactly zero, and reading all 30k x 384
    of them cost ~4 ms a step."""
    import torch
    from accelerate.utils import DistributedType

    inner = getattr(optimizer, "optimizer", optimizer)
    fused = isinstance(inner, torch.optim.AdamW) and bool(inner.defaults.get("fused"))
    simple = acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if not (fused and simple and acc.scaler is None):
        acc.clip_grad_norm_(model.parameters(), max_norm)
        return
    embedding = _sparse_grad_embedding(acc, model) if input_ids is not None else None
    grads = [p.grad for p in model.parameters() if p.grad is not None and p is not embedding]
    norms = list(torch._foreach_norm(grads))
    if embedding is not None and embedding.grad is not None:
        norms.append(torch.linalg.vector_norm(embedding.grad.index_select(0, torch.unique(input_ids))))
    total = torch.linalg.vector_norm(torch.stack(norms))
    inner.grad_scale = torch.clamp((total + 1e-6) / max_norm, min=1.0)  # 1 / clip coefficient
    inner.found_inf = torch.zeros((), device=total.device)


def _sparse_grad_embedding(acc, model):
    """The word-embedding weight when its gradient is nonzero only on the rows of the batch's
    input ids: one process (DDP would add other processes' rows) and not tied to an output layer."""
    if acc.num_processes != 1:
        return None
    inner = acc.unwrap_model(model)
    embeddings = inner.get_input_embeddings() if hasattr(inner, "get_input_embeddings") else None
    output = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if embeddings is None or (output is not None and getattr(output, "weight", None) is embeddings.weight):
        return None
    return embeddings.weight


def release_grad_scale(optimizer) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)
    if getattr(inner, "grad_scale", None) is not None:
        inner.grad_scale = inner.found_inf = None


def batch_loss(logits, labels, index: int, plan: Plan, process: int, rows: int, regression: bool):
    """This process's share of the mean loss over the real rows of global batch `index`.

    Accelerate splits each global batch of G rows into equal per-process slices; a last, short
    batch is padded with rows from the start of the epoch so every process gets a full slice. Those
    repeated rows get weight 0 here, and the real ones P/n (n real rows in the global batch, P
    processes), so that DDP's average over processes is exactly the mean over the n real rows:
    N processes x B rows train exactly like 1 process x N*B rows, last batch included.
    Returns (loss, number of real rows in this process's slice).
    """
    import torch.nn.functional as F

    per_row = (F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="none") if regression
               else F.cross_entropy(logits.float(), labels, reduction="none"))
    global_batch = plan.batch_size * plan.processes
    in_batch = min(global_batch, rows - index * global_batch)  # real rows in this global batch
    real = max(0, min(len(per_row), in_batch - process * plan.batch_size))
    if real == len(per_row) and in_batch == global_batch:
        return per_row.mean(), real  # the usual case: a full batch
    return per_row[:real].sum() * (plan.processes / in_batch), real


def _evaluate(run: Run, state: dict[str, Any], *, epoch: float, step: int, log: MetricsLog) -> dict[str, Any]:
    from ftcli.evaluation import run_eval

    from ftcli.fastops import standard_attention

    start = time.perf_counter()
    with standard_attention(run.accelerator.unwrap_model(run.model)):
        result = run_eval(run.accelerator, run.model, run.eval_dl, run.metric, regression=run.prepared.is_regression)
    result["seconds"] = round(time.perf_counter() - start, 3)
    record = {"type": "eval", "step": step, "epoch": epoch, "split": run.eval_split, **result}
    log.write(record)
    if run.cfg.train.report_to:
        run.accelerator.log({f"eval/{k}": v for k, v in result.items()}, step=step)
    state["last_eval"] = record
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("samples", "seconds"))
    run.reporter.info(f"eval step {step} (epoch {epoch:g}): {shown}  ({result['samples']} rows, {result['seconds']:.1f}s)")
    return result


def _update_best(state: dict[str, Any], result: dict[str, Any], step: int, t) -> bool | None:
    """Track the best evaluation by `metric_for_best`; True when this one is the new best. Every
    process computes the same value from the same gathered predictions, so early-stopping
    decisions agree without a collective."""
    if t.metric_for_best is None:
        return None
    value = result[t.metric_for_best]
    best = state.get("best")
    better = best is None or (value > best["value"] if t.best_is_greater else value < best["value"])
    if better:
        state["best"] = {"metric": t.metric_for_best, "value": value, "step": step,
                         "checkpoint": checkpoint.name_for(step), "eval": result}
        state["bad_evals"] = 0
    else:
        state["bad_evals"] = state.get("bad_evals", 0) + 1
    return better


def _save_checkpoint(run: Run, state: dict[str, Any]) -> Path:
    acc = run.accelerator
    saved = dict(state, fingerprint=run_fingerprint(run))
    path = checkpoint.save(acc, run.output_dir, state["step"], saved)
    if acc.is_main_process:
        best = state.get("best")
        removed = checkpoint.rotate(run.output_dir, run.cfg.train.save_total_limit,
                                    protect={best["checkpoint"]} if best else set())
        _write_run_json(run, "running", checkpoint=str(path))
        run.reporter.info(f"checkpoint {path}" + (f" (removed {', '.join(p.name for p in removed)})" if removed else ""))
    return path


def _flat_for_trackers(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Trackers (tensorboard hparams) take flat scalars."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_for_trackers(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def run_fingerprint(run: Run) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: training-relevant config, data, batch."""
    return {"config": run.cfg.to_dict(), "data_key": run.prepared.manifest["key"], "global_batch": run.plan.global_batch}


class StopFlag:
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, exit 130/143. A second
    SIGINT stops at once (KeyboardInterrupt). Processes agree on stopping at the same step."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def agreed(self, acc) -> bool:
        """Whether any process was signalled (one tiny all-reduce when there are several)."""
        if acc.num_processes == 1:
            return self.signum is not None
        import torch

        code = torch.tensor([float(self.signum or 0)], device=acc.device)
        code = acc.reduce(code, reduction="sum")
        if code.item() and self.signum is None:
            self.signum = signal.SIGTERM
        return bool(code.item())


class MetricsLog:
    """metrics.jsonl, appended by the main process; each line flushed as written."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines the interrupted run logged after its checkpoint."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------------------------
# Outputs


def _write_run_json(run: Run, status: str, **extra: Any) -> None:
    path = run.output_dir / "run.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    current.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
    atomic_write_text(path, json.dumps(current, indent=2))


def export_model(run: Run, folder: Path) -> None:
    """Write the final model and tokenizer to `folder` atomically (a temporary folder renamed
    when complete). The full state dict is gathered through the Accelerator, so this also works
    when FSDP or DeepSpeed shard the weights; every process must call it."""
    acc = run.accelerator
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(run.model)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if acc.is_main_process:
        from ftcli.modeling import quiet_transformers

        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = acc.unwrap_model(run.model)
        with quiet_transformers():
            unwrapped.save_pretrained(tmp, state_dict=state_dict, save_function=acc.save)
            run.tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes 0600 temp files; a model folder is meant to be shared
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    acc.wait_for_everyone()


OWN_ENTRIES = ("model", "checkpoints", "config.yaml", "run.json", "metrics.jsonl", "metrics.json",
               "learning_curves.png", "tracking", "predictions", ".model.tmp", ".model.old")
"""What ftcli writes into output_dir (and `--overwrite` removes; nothing else is touched)."""


def _claim_output_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to mix two runs in one output_dir, or to write into a path that is not a folder.
    Only reads: `train()` deletes ftcli's own entries later, for --overwrite, once every input
    check has passed."""
    if out.exists() and not out.is_dir():
        raise FtcliError(f"train.output_dir {str(out)!r} is a file, not a folder; choose another output_dir")
    existing = [name for name in OWN_ENTRIES if (out / name).exists()]
    if not existing or resume:
        return
    if not overwrite:
        raise FtcliError(
            f"train.output_dir {str(out)!r} already holds a run ({', '.join(existing)}); "
            "pass --resume auto to continue it, --overwrite to replace it, or choose another output_dir"
        )


def resume_command(out: Path, processes: int) -> str:
    """The command that resumes the run in `out`: its saved config.yaml holds every --set override."""
    import shlex

    command = f"ftcli train --resume {shlex.quote(str(out))}"
    if processes > 1:
        return f"accelerate launch <the same launch options> -m {command}"
    return command


def train(
    config: Config | str | Path,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
    reporter: Reporter | None = None,
    overrides: list[str] = (),
) -> dict[str, Any]:
    """Fine-tune as `config` says; return the results (also written to output_dir/metrics.json).

    `config` is a Config, or the path of a YAML file. `resume`: `auto` (the newest intact
    checkpoint in output_dir, or a fresh start when there is none) or a checkpoint folder.
    Callable from Python and from `accelerate.notebook_launcher(train, (cfg,), num_processes=N)`.
    """
    from accelerate.utils import broadcast_object_list

    from ftcli.distributed import accelerator_session

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    reporter = reporter or Reporter()
    out = Path(cfg.train.output_dir)
    if resume and overwrite:
        raise FtcliError("--resume and --overwrite exclude each other: continue the run, or replace it")
    spec = "auto"
    if resume not in (None, "auto"):
        from ftcli.run_dir import check_resume_target

        spec = str(check_resume_target(cfg, resume) or "auto")
    from ftcli.data import check_splits

    check_splits(cfg.data, cfg.data.train_split)
    from ftcli.distributed import check_trackers

    check_trackers(cfg.train.report_to)
    _claim_output_dir(out, resume, overwrite)  # before the start-up summary: a refusal comes first
    with accelerator_session(cfg, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                             log_with=cfg.train.report_to or None, project_dir=str(out / "tracking")) as acc:
        run = setup(cfg, acc, reporter)  # every bad-input check happens here, before any write
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "samples": 0, "tokens": 0, "bad_evals": 0}
        ckpt = None
        if resume:
            found = [checkpoint.find(out, spec, reporter.info) if acc.is_main_process else None]
            broadcast_object_list(found)  # one process verifies checksums; all resume the same one
            ckpt = found[0]
            if ckpt is None:
                if any((out / name).exists() for name in OWN_ENTRIES):
                    raise FtcliError(f"--resume {resume}: {str(out)!r} holds a run but no intact checkpoint to resume; "
                                     "pass --overwrite to start it over")
                reporter.info(f"no checkpoint in {checkpoint.root(out)}: starting from the beginning")
        if ckpt is not None:
            saved = checkpoint.read_state(ckpt)
            if not allow_changes:
                checkpoint.check_compatible(saved["fingerprint"], run_fingerprint(run), ckpt)
            acc.load_state(str(ckpt))
            state = {k: v for k, v in saved.items() if k not in ("files", "fingerprint", "format")}
            reporter.info(f"resumed from {ckpt}: step {state['step']}/{run.plan.total_steps}, "
                          f"epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']}")
        acc.wait_for_everyone()
        if acc.is_main_process:
            if overwrite:
                for name in OWN_ENTRIES:
                    target = out / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(run.cfg.to_dict(), sort_keys=False))
            log = MetricsLog(out / "metrics.jsonl", True)
            if ckpt is not None:
                log.truncate_after(state["step"])
            else:
                (out / "metrics.jsonl").unlink(missing_ok=True)
            _write_run_json(run, "running", resumed_from=str(ckpt) if ckpt else None)
        acc.wait_for_everyone()
        if cfg.train.report_to:
            acc.init_trackers(out.name or "ftcli", config=_flat_for_trackers(cfg.to_dict()))

        run.stop = StopFlag().install()
        try:
            result = fit(run, state)
        finally:
            run.stop.restore()
        if result["stopped"] == "signal":
            code = EXIT_SIGINT if run.stop.signum == signal.SIGINT else EXIT_SIGTERM
            if acc.is_main_process:
                _write_run_json(run, "interrupted", step=result["steps"])
            message = (
                f"interrupted at step {result['steps']}/{run.plan.total_steps}, checkpoint written to "
                f"{checkpoint.root(out) / checkpoint.name_for(result['steps'])}; resume with: "
                f"{resume_command(out, acc.num_processes)}")
            raise TrainingInterrupted(message if acc.is_main_process else "", code)  # said once

        final_eval = state.get("last_eval")
        exported = {"from": "last", "step": result["steps"]}
        best = state.get("best")
        if cfg.train.final_model == "best" and best and best["step"] != result["steps"]:
            acc.load_state(str(checkpoint.root(out) / best["checkpoint"]))
            final_eval = {"type": "eval", "step": best["step"], **best["eval"]}
            exported = {"from": "best", "step": best["step"], "checkpoint": best["checkpoint"]}
        export_model(run, out / "model")
        summary = {
            "output_dir": str(out),
            "model_dir": str(out / "model"),
            "processes": acc.num_processes,
            "global_batch": run.plan.global_batch,
            "planned_steps": run.plan.total_steps,
            "mixed_precision": acc.mixed_precision,
            "metric": run.metric_name,
            "resumed_from": str(ckpt) if ckpt else None,
            **result,
            "exported": exported,
            "best": {k: v for k, v in best.items() if k != "eval"} if best else None,
            "eval": {k: v for k, v in final_eval.items() if k not in ("type", "time", "epoch", "split", "step")}
            if final_eval else None,
        }
        if acc.is_main_process:
            atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
            _write_run_json(run, "completed", step=result["steps"])
            try:
                from ftcli.plot import plot_run

                plot_run(out)
            except Exception as exc:  # noqa: BLE001 - a missing picture must not fail a finished run
                run.reporter.warn(f"could not draw learning curves ({exc}); try: ftcli plot {out}")
            resumed = f" (resumed at step {summary['steps'] - summary['steps_this_run']}, now {summary['steps']})" \
                if ckpt is not None else ""
            run.reporter.info(
                f"done: {summary['steps_this_run']} steps{resumed} in {format_duration(summary['seconds_this_run'])}"
                + (f" ({summary['samples_per_s']} samples/s)" if summary["samples_per_s"] else "")
                + (" - stopped early: no improvement" if result["stopped"] == "early_stopping" else "")
                + f"; model ({exported['from']}, step {exported['step']}) saved to {out / 'model'}"
            )
            if summary["eval"]:
                run.reporter.results(f"{run.eval_split} metrics",
                                     {k: v for k, v in summary["eval"].items() if k != "seconds"})
    return summary
