"""`ftcli train`: the Hugging Face course's Accelerate loop, made configurable.

Three layers, top to bottom: `train()` checks the request, opens an Accelerator, resumes and
writes the outputs; `setup()` builds everything (data, model, optimizer, schedule); `fit()` is
the loop. The same code runs on one CPU, one or several GPUs, several machines or a TPU, under
`accelerate launch -m ftcli train`. What the run folder holds: ftcli.run_dir.

Batch sizes, by name (ftcli.batching): `batch_size` rows per process and micro-step; a *micro
batch* is that times the processes (one forward pass over all processes); a *step batch* is a
micro batch times `gradient_accumulation_steps` (one optimizer step).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ftcli import checkpoint, run_dir
from ftcli.config import Config, TrainConfig, as_config, flatten
from ftcli.console import Reporter, format_duration
from ftcli.errors import EXIT_SIGINT, EXIT_SIGTERM, FtcliError, TrainingInterrupted
from ftcli.files import atomic_write_text
from ftcli.signals import StopFlag
from ftcli.state import Best, Fingerprint, TrainState


@dataclass
class Plan:
    """Step arithmetic, computed once from the prepared dataloader (the truth on N processes)."""

    processes: int
    batch_size: int  # rows per process and micro-step
    accumulation: int
    micro_batches_per_epoch: int  # len(train dataloader): Accelerate splits each among the processes
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int
    capped: bool = False  # train.max_steps decides the length, not train.epochs

    @property
    def micro_batch(self) -> int:
        return self.batch_size * self.processes

    @property
    def step_batch(self) -> int:
        return self.micro_batch * self.accumulation

    def describe(self) -> str:
        """The start-up summary's `steps` line."""
        if self.capped:
            return (f"{self.total_steps} optimizer steps (train.max_steps; {self.total_steps / self.steps_per_epoch:.3g} "
                    f"epochs of {self.steps_per_epoch} steps)")
        return f"{self.steps_per_epoch} per epoch x {self.epochs} epoch(s) = {self.total_steps} optimizer steps"

    def epoch_label(self, epoch: int) -> str:
        """The progress bar's description in (0-based) `epoch`."""
        if self.capped:
            return f"epoch {epoch + 1} of {self.total_steps / self.steps_per_epoch:.3g} (max_steps {self.total_steps})"
        return f"epoch {epoch + 1}/{self.epochs}"


def make_plan(t: TrainConfig, micro_batches_per_epoch: int, processes: int) -> Plan:
    steps = math.ceil(micro_batches_per_epoch / t.gradient_accumulation_steps)
    total = t.max_steps if t.max_steps is not None else t.epochs * steps
    warmup = t.warmup_steps if t.warmup_ratio is None else math.ceil(t.warmup_ratio * total)
    return Plan(
        processes=processes, batch_size=t.batch_size, accumulation=t.gradient_accumulation_steps,
        micro_batches_per_epoch=micro_batches_per_epoch, steps_per_epoch=steps, total_steps=total,
        epochs=math.ceil(total / steps), warmup_steps=min(warmup, total), capped=t.max_steps is not None,
    )


@dataclass
class Run:
    """Everything `fit()` needs, built by `setup()`."""

    cfg: Config  # with the values ftcli resolved (data.max_length)
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
    clipping: str  # "folded" into fused AdamW, "separate" (Accelerate's clip), or "off"
    sparse_embedding: Any = None  # see optim.sparse_grad_embedding
    class_weights: Any = None  # per-label loss weights on the device (train.class_weights), or None
    last_predictions: tuple | None = None  # (predicted, true) labels of the latest evaluation
    eval_split: str | None = None
    stop: StopFlag | None = None
    on_eval: Callable[[int, dict[str, Any]], bool] | None = None  # see train()

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.cfg.to_dict(), self.prepared.manifest["key"], self.plan.step_batch)


# --------------------------------------------------------------------------------------------
# Setup


def setup(cfg: Config, accelerator, reporter: Reporter) -> Run:
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from ftcli import batching, cache, evaluation, modeling, optim
    from ftcli.runtime import single_process_launch_hint

    t = cfg.train
    reporter.enabled = reporter.enabled and accelerator.is_main_process
    _check_same_config(cfg, accelerator)
    if hint := single_process_launch_hint(accelerator):
        reporter.warn(hint)
    set_seed(t.seed)

    # One process tokenizes (or finds the cache); the others wait on the cache's file lock, then
    # load the result. A lock rather than `main_process_first`: a barrier would time out when a
    # first tokenization of a large dataset outlasts the collective timeout; a lock never does.
    prepared = cache.prepare(cfg, log=reporter.info, progress=reporter.progress)
    if accelerator.is_main_process:
        _report_cache(reporter, prepared, cfg.data.validation_name)
    # From here on the config holds the values ftcli resolved: the run's config.yaml and the
    # checkpoints' fingerprint say what was used, not `null`.
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": prepared.max_length})})
    train_info = prepared.split_info(cfg.data.train_split)
    if not train_info["labeled"]:
        raise FtcliError(f"{train_info['source']}: the training split has no labels")
    eval_split = cfg.data.validation_name if cfg.data.validation_name in prepared.manifest["splits"] else None
    if eval_split and not prepared.split_info(eval_split)["labeled"]:
        eval_split = None
    if eval_split is None and _named_validation(cfg):
        raise FtcliError(f"data.validation_split: the data has no labelled split {cfg.data.validation_name!r} "
                         f"(splits: {', '.join(prepared.manifest['splits'])}); name one, or give a fraction (0.1) "
                         "or a row count (200) to hold out")
    if eval_split is None:
        reporter.warn(f"no labelled split {cfg.data.validation_name!r}: training without evaluation "
                      "(data.validation_split: 0.1 holds out a tenth of the training rows)")

    tokenizer = modeling.load_tokenizer(cfg.model)
    model = modeling.load_model(cfg.model, prepared.label_names, prepared.is_multi_label)
    if t.fast_dropout and accelerator.device.type == "cpu" and cfg.model.attn_implementation == "auto":
        from ftcli import fastops

        fastops.install(model)
    if t.compile:
        model = torch.compile(model, dynamic=True)
    optimizer, not_fused = optim.make_optimizer(model, t, accelerator.device.type)
    train_dl = batching.train_dataloader(cfg.data, t, accelerator, prepared.split(cfg.data.train_split), prepared)
    eval_dl = None
    if eval_split:
        eval_dl = batching.eval_dataloader(cfg.data, accelerator, prepared.split(eval_split), prepared,
                                           batch_size=t.eval_batch_size, workers=t.dataloader_workers)
    name = evaluation.metric_name(cfg.eval, prepared.label_names, prepared.is_multi_label)
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
    plan = make_plan(t, len(train_dl), accelerator.num_processes)
    scheduler = get_scheduler(
        t.scheduler, optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps
    )
    # Prepared so that save_state/load_state carry it; fit() steps it once per optimizer step.
    scheduler = accelerator.prepare(scheduler)

    clipping, why_separate = "off", None
    if t.max_grad_norm is not None and not t.fused_clipping:
        clipping, why_separate = "separate", "train.fused_clipping is off"
    elif t.max_grad_norm is not None:
        clipping, why_separate = optim.clipping_mode(optimizer, accelerator.distributed_type,
                                                     accelerator.scaler is not None)
        if clipping == "separate":  # asked for, not possible: say so
            why_separate = not_fused or why_separate
            reporter.warn(f"gradient clipping takes a separate pass: {why_separate}")
    weights = class_weights(t, prepared, cfg.data.train_split)
    run = Run(
        cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
        train_dl=train_dl, eval_dl=eval_dl, metric=metric, metric_name=name, prepared=prepared, plan=plan,
        reporter=reporter, tokenizer=tokenizer, output_dir=Path(t.output_dir), eval_split=eval_split,
        clipping=clipping,
        sparse_embedding=optim.sparse_grad_embedding(accelerator.unwrap_model(model), accelerator.num_processes)
        if clipping == "folded" else None,
        class_weights=torch.tensor(weights, device=accelerator.device) if weights else None,
    )
    _report_start(run, sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
                  torch.get_num_threads(), why_separate)
    return run


def class_weights(t: TrainConfig, prepared, train_split: str) -> list[float] | None:
    """`train.class_weights` as one weight per label; `auto`: n / (classes x n_c) from the
    training split's class counts (scikit-learn's "balanced"), so the average row weighs 1. For
    multi-label data the weights are BCE's `pos_weight` (auto: negatives / positives of each
    label), which weigh a label's positive targets against its negative ones."""
    if t.class_weights is None:
        return None
    names = prepared.label_names
    if not names:
        raise FtcliError("train.class_weights: regression (num_labels: 1) has no classes to weigh; remove it")
    if t.class_weights == "auto":
        counts = prepared.split_info(train_split)["classes"]
        if prepared.is_multi_label:  # BCE's pos_weight: negatives per positive of each label
            rows = prepared.split_info(train_split)["rows"]
            return [(rows - counts[name]) / counts[name] if counts[name] else 1.0 for name in names]
        total = sum(counts.values())
        # A class without training rows gets weight 0: it never appears in the loss anyway.
        return [total / (len(names) * counts[name]) if counts[name] else 0.0 for name in names]
    if len(t.class_weights) != len(names):
        raise FtcliError(f"train.class_weights: {len(t.class_weights)} weights for {len(names)} labels "
                         f"({', '.join(names)}); give one weight per label, in that order, or use auto")
    return list(t.class_weights)


def _class_report(run: Run, final_eval: dict[str, Any] | None, *, fresh: bool) -> dict[str, Any] | None:
    """The per-class report of the exported model on the validation split (classification). The
    latest evaluation's predictions when they belong to the exported weights; else (the best
    checkpoint's weights, or a run resumed after its last evaluation) one evaluation more."""
    from ftcli.evaluation import per_class_report, run_eval
    from ftcli.fastops import standard_attention

    if run.eval_dl is None or not run.prepared.label_names or final_eval is None:
        return None
    multi = run.prepared.is_multi_label
    if not fresh or run.last_predictions is None:
        with standard_attention(run.accelerator.unwrap_model(run.model)):
            result = run_eval(run.accelerator, run.model, run.eval_dl, run.metric, regression=False,
                              keep_predictions=True, multi_label=multi, threshold=run.cfg.eval.threshold)
        run.last_predictions = result["_predictions"], result["_references"]
    metrics = {k: v for k, v in final_eval.items() if k not in ("type", "time", "epoch", "seconds")}
    return {**metrics, **per_class_report(*run.last_predictions, run.prepared.label_names, multi)}


def _check_same_config(cfg: Config, accelerator) -> None:
    """Every process of a launch must train with the same settings (one config file read on
    several machines, a sweep's trial values): otherwise they would silently train different
    things with averaged gradients, or hang in a collective."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    mine = _flatten(cfg.to_dict())
    everyone = gather_object([mine])
    differ = sorted({k for other in everyone for k in mine.keys() | other.keys() if mine.get(k) != other.get(k)})
    if differ:
        key = differ[0]
        values = ", ".join(f"process {i}: {other.get(key)!r}" for i, other in enumerate(everyone))
        raise FtcliError(f"the {len(everyone)} processes of this launch were given different configs: {key} ({values})"
                         + (f" and {len(differ) - 1} more setting(s)" if len(differ) > 1 else "")
                         + "; give every process the same config file and --set options")


def _named_validation(cfg: Config) -> bool:
    """Whether `data.validation_split` names a split other than the default one: that split must
    exist (a typo must not train without evaluation). Without the default `validation` split a
    run trains without evaluation, with a warning."""
    from ftcli.config import DataConfig

    return cfg.data.holdout is None and cfg.data.validation_split != DataConfig.model_fields["validation_split"].default


def _report_cache(reporter: Reporter, prepared, validation: str) -> None:
    splits = ", ".join(f"{s} {i['rows']:,}" for s, i in prepared.manifest["splits"].items())
    if prepared.hit:
        reporter.info(f"data: cache hit {prepared.path} ({splits})")
    else:
        reporter.info(f"data: tokenized in {prepared.seconds:.1f}s ({prepared.why_missed}) -> {prepared.path} ({splits})")
        for split in prepared.manifest["splits"]:  # the first time only: `ftcli prepare` shows it any time
            reporter.info(f"  {prepared.describe(split)}")
    if warning := prepared.absence_warning(validation):
        reporter.warn(warning)


def _report_start(run: Run, n_params: int, threads: int, why_separate: str | None) -> None:
    from ftcli.runtime import precision_label

    cfg, acc, plan, prep, eval_split = run.cfg, run.accelerator, run.plan, run.prepared, run.eval_split
    labels = prep.label_names or ["(regression)"]
    clipping = {"off": "off", "folded": f"norm {cfg.train.max_grad_norm}, folded into fused AdamW",
                "separate": f"norm {cfg.train.max_grad_norm}, separate pass ({why_separate})"}[run.clipping]
    run.reporter.summary("ftcli train", [
        ("model", f"{cfg.model.name_or_path} ({n_params / 1e6:.1f}M parameters)"),
        ("labels", ", ".join(labels)),
        ("data", f"{cfg.data.train_split} {prep.split_info(cfg.data.train_split)['rows']:,} rows"
                 + (f", {eval_split} {prep.split_info(eval_split)['rows']:,} rows" if eval_split else "")),
        ("device", f"{acc.device.type} x {acc.num_processes} process(es)"
                   + (f" ({acc.distributed_type.value})" if acc.num_processes > 1 else "")
                   + (f", {threads} threads each" if acc.device.type == "cpu" else "")),
        ("precision", precision_label(acc, cfg.train)),
        ("batch", f"{plan.batch_size} per process x {plan.processes} process(es) x {plan.accumulation} "
                  f"accumulation = {plan.step_batch} global"),
        ("steps", plan.describe()),
        ("schedule", f"{cfg.train.scheduler}, warmup {plan.warmup_steps} steps, peak lr {cfg.train.learning_rate}"),
        ("clipping", clipping),
        *([("class weights", ", ".join(f"{n} {w:.3g}" for n, w in zip(prep.label_names, run.class_weights.tolist())))]
          if run.class_weights is not None else []),
        ("output", str(run.output_dir)),
    ])


# --------------------------------------------------------------------------------------------
# The loop


def fit(run: Run, state: TrainState) -> dict[str, Any]:
    """Train from `state` (fresh, or read from a checkpoint) to `plan.total_steps` optimizer steps.
    Evaluates and checkpoints on schedule; stops early when told to (patience, SIGINT/SIGTERM)."""
    from ftcli.optim import release_grad_scale

    acc, model, optimizer, scheduler, plan, t = run.accelerator, run.model, run.optimizer, run.scheduler, run.plan, run.cfg.train
    log = run_dir.MetricsLog(run.output_dir / "metrics.jsonl", acc.is_main_process)
    window = Window(acc, plan, rows=run.prepared.split_info(run.cfg.data.train_split)["rows"])
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
                    labels = batch.pop("labels")
                    loss, real = batch_loss(model(**batch).logits, labels, index, plan, acc.process_index,
                                            window.rows, run.prepared.is_regression, run.class_weights,
                                            multi_label=run.prepared.is_multi_label)
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
    """Clip the gradient norm once per optimizer step (see ftcli.optim). `touched`: the input ids
    of the step's micro batches, for the row-sparse embedding norm."""
    import torch

    from ftcli import optim

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
        if _update_best(state, result, t) is False and t.early_stopping_patience:
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


def batch_loss(logits, labels, index: int, plan: Plan, process: int, rows: int, regression: bool,
               class_weights=None, *, multi_label: bool = False):
    """This process's share of the mean loss over the real rows of micro batch `index`.
    `class_weights` weigh each row's loss by its label (the mean is still over rows, not over
    weights: a batch's loss does not depend on which other classes share it).

    Accelerate splits each micro batch of M rows into equal per-process slices; a last, short
    batch is padded with rows from the start of the epoch so every process gets a full slice. Those
    repeated rows get weight 0 here, and the real ones P/n (n real rows in the micro batch, P
    processes), so that DDP's average over processes is exactly the mean over the n real rows:
    N processes x B rows train exactly like 1 process x N*B rows, last batch included.
    Returns (loss, number of real rows in this process's slice).
    """
    import torch.nn.functional as F

    if regression:
        per_row = F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="none")
    elif multi_label:  # each label on its own; a row's loss is the mean over its labels
        per_row = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=class_weights,
                                                     reduction="none").mean(-1)
    else:
        per_row = F.cross_entropy(logits.float(), labels, weight=class_weights, reduction="none")
    in_batch = min(plan.micro_batch, rows - index * plan.micro_batch)  # real rows in this micro batch
    real = max(0, min(len(per_row), in_batch - process * plan.batch_size))
    if real == len(per_row) and in_batch == plan.micro_batch:
        return per_row.mean(), real  # the usual case: a full batch
    return per_row[:real].sum() * (plan.processes / in_batch), real


def _evaluate(run: Run, state: TrainState, *, epoch: float, log) -> dict[str, Any]:
    from ftcli import evaluation
    from ftcli.evaluation import run_eval
    from ftcli.fastops import standard_attention

    start = time.perf_counter()
    with standard_attention(run.accelerator.unwrap_model(run.model)):
        result = run_eval(run.accelerator, run.model, run.eval_dl, run.metric, regression=run.prepared.is_regression,
                          keep_predictions=True, multi_label=run.prepared.is_multi_label,
                          threshold=run.cfg.eval.threshold)
    run.last_predictions = result.pop("_predictions"), result.pop("_references")
    result.pop("_scores", None)
    if run.prepared.is_multi_label and (warning := evaluation.few_positives_warning(
            *run.last_predictions, run.cfg.eval.threshold, run.eval_split)):
        run.reporter.warn(f"step {state.step}: {warning}")
    result["seconds"] = round(time.perf_counter() - start, 3)
    record = {"type": "eval", "step": state.step, "epoch": epoch, "split": run.eval_split, **result}
    log.write(record)
    if run.cfg.train.report_to:
        run.accelerator.log({f"eval/{k}": v for k, v in result.items()}, step=state.step)
    state.last_eval = record
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k not in ("samples", "seconds"))
    run.reporter.info(f"eval step {state.step} (epoch {epoch:g}): {shown}  ({result['samples']} rows, "
                      f"{result['seconds']:.1f}s)")
    return result


def _update_best(state: TrainState, result: dict[str, Any], t: TrainConfig) -> bool | None:
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


def _flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """The config as flat scalars by dotted key: what trackers (tensorboard hparams) take, and what
    processes compare to agree on their settings."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flatten(obj).items()}


# --------------------------------------------------------------------------------------------
# Main


def train(
    config: Config | str | Path,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    allow_changes: bool = False,
    reporter: Reporter | None = None,
    on_eval: Callable[[int, dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Fine-tune as `config` says; return the results (also written to output_dir/metrics.json).

    `config` is a Config, or the path of a YAML file. `resume`: `auto` (the newest intact
    checkpoint in output_dir, or a fresh start when there is none), the run folder itself, or a
    checkpoint folder. `on_eval(step, metrics)` is called on every process after each
    validation; True on the main process stops training there on every process (`stopped: pruned`).
    Callable from Python and from `accelerate.notebook_launcher(train, (cfg,), num_processes=N)`.
    """
    from ftcli.build import check_splits
    from ftcli.runtime import accelerator_session, check_trackers

    cfg = as_config(config)
    reporter = reporter or Reporter()
    out = Path(cfg.train.output_dir)
    if resume and overwrite:
        raise FtcliError("--resume and --overwrite exclude each other: continue the run, or replace it")
    spec = "auto" if resume in (None, "auto") else str(run_dir.check_resume_target(cfg, resume) or "auto")
    check_splits(cfg.data, cfg.data.train_split)
    if _named_validation(cfg):
        check_splits(cfg.data, cfg.data.validation_name)
    check_trackers(cfg.train.report_to)
    run_dir.claim_output_dir(out, resume, overwrite)  # before the start-up summary: a refusal comes first
    with accelerator_session(cfg.train, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                             log_with=cfg.train.report_to or None, project_dir=str(out / "tracking")) as acc:
        # The checkpoint is found and its checksums verified before anything heavy loads: a damaged
        # one is refused at once, not after the model and the start-up summary.
        found = _find_checkpoint(acc, out, spec, reporter) if resume else None
        run = setup(cfg, acc, reporter)  # every bad-input check happens here, before any write
        run.on_eval = on_eval
        state, ckpt = _resume(run, resume, found, allow_changes) if resume else (TrainState(), None)
        acc.wait_for_everyone()
        if acc.is_main_process:
            _start_outputs(run, state, ckpt, overwrite)
        acc.wait_for_everyone()
        if cfg.train.report_to:
            acc.init_trackers(out.name or "ftcli", config=_flatten(run.cfg.to_dict()))

        run.stop = StopFlag().install()
        try:
            result = fit(run, state)
        finally:
            run.stop.restore()
        if result["stopped"] == "signal":
            _interrupted(run, result)
        return _finish(run, state, result, ckpt)


def _find_checkpoint(acc, out: Path, spec: str, reporter: Reporter) -> Path | None:
    """The verified checkpoint to resume (None: there is none), the same on every process."""
    from accelerate.utils import broadcast_object_list

    found = [checkpoint.find(out, spec, reporter.info) if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(found)  # one process verifies checksums; all resume the same one
    return found[0]


def _resume(run: Run, resume: str, ckpt: Path | None, allow_changes: bool) -> tuple[TrainState, Path | None]:
    """The state to continue from: the verified checkpoint's (loaded into the Accelerator), or a
    fresh one when `--resume auto` finds none in a folder that holds no run."""
    acc, out = run.accelerator, run.output_dir
    if ckpt is None:
        if any((out / name).exists() for name in run_dir.OWN_ENTRIES):
            raise FtcliError(f"--resume {resume}: {str(out)!r} holds a run but no intact checkpoint to resume; "
                             "pass --overwrite to start it over")
        run.reporter.info(f"no checkpoint in {checkpoint.root(out)}: starting from the beginning")
        return TrainState(), None
    saved = checkpoint.read_state(ckpt)
    if not allow_changes:
        checkpoint.check_compatible(saved.fingerprint, run.fingerprint(), ckpt)
    acc.load_state(str(ckpt))
    state = saved.state
    run.reporter.info(f"resumed from {ckpt}: step {state.step}/{run.plan.total_steps}, "
                      f"epoch {state.epoch + 1}, batch {state.batch_in_epoch}")
    return state, ckpt


def _start_outputs(run: Run, state: TrainState, ckpt: Path | None, overwrite: bool) -> None:
    """Main process: clear an overwritten run, write the resolved config, start the logs."""
    out = run.output_dir
    if overwrite:
        run_dir.clear(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / run_dir.CONFIG_FILE, yaml.safe_dump(run.cfg.to_dict(), sort_keys=False))
    log = run_dir.MetricsLog(out / "metrics.jsonl", True)
    if ckpt is not None:
        log.truncate_after(state.step)
    else:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.write_run_json(out, "running", resumed_from=str(ckpt) if ckpt else None)


def _interrupted(run: Run, result: dict[str, Any]) -> None:
    acc, out = run.accelerator, run.output_dir
    code = EXIT_SIGINT if run.stop.signum == signal.SIGINT else EXIT_SIGTERM
    if acc.is_main_process:
        run_dir.write_run_json(out, "interrupted", step=result["steps"])
    message = (
        f"interrupted at step {result['steps']}/{run.plan.total_steps}, checkpoint written to "
        f"{checkpoint.root(out) / checkpoint.name_for(result['steps'])}; resume with: "
        f"{run_dir.resume_command(out, acc.num_processes)}")
    raise TrainingInterrupted(message if acc.is_main_process else "", code)  # said once


def _finish(run: Run, state: TrainState, result: dict[str, Any], ckpt: Path | None) -> dict[str, Any]:
    """Export the model (last or best), write metrics.json and the learning curves, report."""
    acc, out, cfg = run.accelerator, run.output_dir, run.cfg
    final_eval = state.last_eval
    exported = {"from": "last", "step": result["steps"]}
    best = state.best
    if cfg.train.final_model == "best" and best and best.step != result["steps"]:
        acc.load_state(str(checkpoint.root(out) / best.checkpoint))
        final_eval = {"type": "eval", "step": best.step, **best.eval}
        exported = {"from": "best", "step": best.step, "checkpoint": best.checkpoint}
    run_dir.export_model(acc, run.model, run.tokenizer, out / "model")
    report = _class_report(run, final_eval, fresh=exported["from"] == "last")
    summary = {
        "output_dir": str(out),
        "model_dir": str(out / "model"),
        "processes": acc.num_processes,
        "global_batch": run.plan.step_batch,  # rows per optimizer step, all processes
        "planned_steps": run.plan.total_steps,
        "mixed_precision": acc.mixed_precision,
        "metric": run.metric_name,
        "data": {"cache": "hit" if run.prepared.hit else "built", "key": run.prepared.manifest["key"]},
        "resumed_from": str(ckpt) if ckpt else None,
        **result,
        "exported": exported,
        "best": {"metric": best.metric, "value": best.value, "step": best.step, "checkpoint": best.checkpoint}
        if best else None,
        "eval": {k: v for k, v in final_eval.items() if k not in ("type", "time", "epoch", "split", "step")}
        if final_eval else None,
        "per_class": report["per_class"] if report else None,
    }
    if acc.is_main_process:
        if report:
            from ftcli.evaluation import write_report

            summary["report"] = str(write_report(out / "eval" / run.eval_split, report,
                                                 f"{run.eval_split}, step {report['step']}: {out / 'model'}"))
        atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
        run_dir.write_run_json(out, "completed", step=result["steps"])
        try:
            from ftcli.plot import plot_run

            plot_run(out)
        except Exception as exc:  # noqa: BLE001 - a missing picture must not fail a finished run
            run.reporter.warn(f"could not draw learning curves ({exc}); try: ftcli plot {out}")
        resumed = f" (resumed at step {result['steps'] - result['steps_this_run']}, now {result['steps']})" \
            if ckpt is not None else ""
        run.reporter.info(
            f"done: {result['steps_this_run']} steps{resumed} in {format_duration(result['seconds_this_run'])}"
            + (f" ({result['samples_per_s']} samples/s)" if result["samples_per_s"] else "")
            + {"early_stopping": " - stopped early: no improvement", "pruned": " - pruned"}.get(result["stopped"], "")
            + f"; model ({exported['from']}, step {exported['step']}) saved to {out / 'model'}"
        )
        if summary["eval"]:
            run.reporter.results(f"{run.eval_split} metrics", {k: v for k, v in summary["eval"].items() if k != "seconds"})
    return summary
