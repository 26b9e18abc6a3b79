"""`ftcli train`: the Hugging Face course's Accelerate loop, made configurable.

`setup()` builds everything (accelerator, data, model, optimizer, schedule); `fit()` is the loop,
top to bottom; `train()` ties them together and writes the outputs. The same code runs on one
CPU, one or several GPUs, several machines or a TPU, under `accelerate launch -m ftcli train`.

Outputs in `train.output_dir`:
    model/          the final model and tokenizer (safetensors; `from_pretrained` loads it)
    config.yaml     the resolved config of the run
    metrics.jsonl   one JSON object per log step and per evaluation
    metrics.json    the final evaluation and training totals
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftcli.config import Config, load_config
from ftcli.console import Reporter, format_duration
from ftcli.errors import FtcliError


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
    history: list[dict[str, Any]] = field(default_factory=list)


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
    if device_type in ("cuda", "cpu"):
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
        reporter=reporter, tokenizer=tokenizer, output_dir=Path(t.output_dir),
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
    cfg, acc, plan, prep = run.cfg, run.accelerator, run.plan, run.prepared
    labels = prep.label_names or ["(regression)"]
    run.reporter.summary("ftcli train", [
        ("model", f"{cfg.model.name_or_path} ({n_params / 1e6:.1f}M parameters)"),
        ("labels", ", ".join(labels)),
        ("data", f"{cfg.data.train_split} {prep.split_info(cfg.data.train_split)['rows']:,} rows"
                 + (f", {eval_split} {prep.split_info(eval_split)['rows']:,} rows" if eval_split else "")),
        ("device", f"{acc.device} x {acc.num_processes} process(es), {acc.distributed_type.value}"
                   + (f", {threads} threads each" if acc.device.type == "cpu" else "")),
        ("precision", acc.mixed_precision),
        ("batch", f"{plan.batch_size} per process x {plan.processes} process(es) x {plan.accumulation} "
                  f"accumulation = {plan.global_batch} global"),
        ("steps", f"{plan.updates_per_epoch} per epoch x {plan.epochs} epoch(s) = {plan.total_steps} optimizer steps"),
        ("schedule", f"{cfg.train.scheduler}, warmup {plan.warmup_steps} steps, peak lr {cfg.train.learning_rate}"),
        ("output", str(run.output_dir)),
    ])


# --------------------------------------------------------------------------------------------
# The loop


def fit(run: Run) -> dict[str, Any]:
    """Train for `plan.total_steps` optimizer steps, evaluating after each epoch."""
    import torch

    acc, model, optimizer, scheduler = run.accelerator, run.model, run.optimizer, run.scheduler
    cfg, plan, log = run.cfg, run.plan, MetricsLog(run.output_dir / "metrics.jsonl", acc.is_main_process)
    step, samples, tokens = 0, 0, 0
    last_eval: dict[str, Any] | None = None
    window_loss = torch.zeros((), device=acc.device)
    window_batches, window_rows, window_tokens = 0, 0, torch.zeros((), device=acc.device, dtype=torch.long)
    window_start = train_start = time.perf_counter()
    smoothed = None
    rows = len(run.train_dl.dataset)
    regression = run.prepared.is_regression
    model.train()

    with run.reporter.progress(plan.total_steps, "train", every=cfg.train.log_every) as bar:
        for epoch in range(plan.epochs):
            run.train_dl.set_epoch(epoch)
            bar.set_description(f"epoch {epoch + 1}/{plan.epochs}")
            for index, batch in enumerate(run.train_dl):
                with acc.accumulate(model):
                    labels = batch.pop("labels")
                    logits = model(**batch).logits
                    loss, real = batch_loss(logits, labels, index, plan, acc.process_index, rows, regression)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.train.max_grad_norm is not None:
                        acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                    optimizer.step()
                    if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                window_loss += loss.detach().float()
                window_batches += 1
                window_tokens += batch["attention_mask"][:real].sum()
                window_rows += real
                if not acc.sync_gradients:
                    continue
                step += 1
                if step % cfg.train.log_every == 0 or step == plan.total_steps:
                    # One collective per log line (not per step): mean loss and global counts.
                    stats = acc.reduce(
                        torch.stack([window_loss / window_batches, window_tokens.float(),
                                     torch.tensor(float(window_rows), device=acc.device)]),
                        reduction="sum",
                    )
                    now = time.perf_counter()
                    mean_loss = float(stats[0]) / acc.num_processes
                    samples += int(stats[2])
                    tokens += int(stats[1])
                    rate = float(stats[2]) / max(now - window_start, 1e-9)
                    smoothed = mean_loss if smoothed is None else 0.8 * smoothed + 0.2 * mean_loss
                    lr = scheduler.get_last_lr()[0]
                    log.write({"type": "train", "step": step, "epoch": round(step / plan.updates_per_epoch, 4),
                               "loss": mean_loss, "lr": lr, "samples_per_s": rate,
                               "tokens_per_s": float(stats[1]) / max(now - window_start, 1e-9)})
                    bar.update(step - bar.done, loss=smoothed, lr=lr, samples_s=round(rate, 1))
                    window_loss.zero_()
                    window_tokens.zero_()
                    window_batches, window_rows, window_start = 0, 0, now
                if step >= plan.total_steps:
                    break
            if run.eval_dl is not None:
                last_eval = _evaluate(run, epoch=epoch + 1, step=step, log=log)
            if step >= plan.total_steps:
                break
    train_seconds = time.perf_counter() - train_start
    return {
        "steps": step,
        "epochs": round(step / plan.updates_per_epoch, 4),
        "samples": samples,
        "tokens": tokens,
        "seconds": round(train_seconds, 3),
        "samples_per_s": round(samples / train_seconds, 2) if train_seconds else None,
        "tokens_per_s": round(tokens / train_seconds, 1) if train_seconds else None,
        "final_lr": run.scheduler.get_last_lr()[0],
        "eval": last_eval,
    }


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


def _evaluate(run: Run, *, epoch: int, step: int, log: MetricsLog) -> dict[str, Any]:
    from ftcli.evaluation import run_eval

    start = time.perf_counter()
    result = run_eval(run.accelerator, run.model, run.eval_dl, run.metric, regression=run.prepared.is_regression)
    result["seconds"] = round(time.perf_counter() - start, 3)
    record = {"type": "eval", "step": step, "epoch": epoch, "split": run.cfg.data.validation_split, **result}
    log.write(record)
    run.history.append(record)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("samples", "seconds"))
    run.reporter.info(f"eval epoch {epoch} step {step}: {shown}  ({result['samples']} rows, {result['seconds']:.1f}s)")
    return result


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


# --------------------------------------------------------------------------------------------
# Outputs


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def export_model(run: Run, folder: Path) -> None:
    """Write the final model and tokenizer to `folder` atomically (a temporary folder renamed
    when complete). The full state dict is gathered through the Accelerator, so this also works
    when FSDP or DeepSpeed shard the weights; every process must call it."""
    acc = run.accelerator
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(run.model)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        from ftcli.modeling import quiet_transformers

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


def train(config: Config | str | Path, *, reporter: Reporter | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Fine-tune as `config` says; return the results (also written to output_dir/metrics.json).

    `config` is a Config, or the path of a YAML file. Callable from Python and from
    `accelerate.notebook_launcher(train, (cfg,), num_processes=N)`.
    """
    from ftcli.distributed import accelerator_session

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    reporter = reporter or Reporter()
    with accelerator_session(cfg, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps) as acc:
        run = setup(cfg, acc, reporter)
        out = run.output_dir
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (out / "metrics.jsonl").unlink(missing_ok=True)
        acc.wait_for_everyone()
        result = fit(run)
        export_model(run, out / "model")
        summary = {
            "output_dir": str(out),
            "model_dir": str(out / "model"),
            "processes": acc.num_processes,
            "global_batch": run.plan.global_batch,
            "planned_steps": run.plan.total_steps,
            "mixed_precision": acc.mixed_precision,
            "metric": run.metric_name,
            **result,
        }
        if acc.is_main_process:
            atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
            ev = summary.get("eval") or {}
            run.reporter.info(
                f"done: {summary['steps']} steps in {format_duration(summary['seconds'])} "
                f"({summary['samples_per_s']} samples/s); model saved to {out / 'model'}"
            )
            if ev:
                run.reporter.results(f"validation ({cfg.data.validation_split})",
                                     {k: v for k, v in ev.items() if k != "seconds"})
    return summary
