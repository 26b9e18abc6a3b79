"""Building a run: data, model, optimizer, schedule and clipping mode, checked and summarized.

`setup()` returns the `Run` that the loop (ftcli.training.loop) trains. Every bad-input check
happens here, before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from ftcli.config import Config, DataConfig, TrainConfig, flatten
from ftcli.console import Reporter
from ftcli.errors import FtcliError
from ftcli.training.plan import Plan, make_plan
from ftcli.training.signals import StopFlag
from ftcli.training.state import Fingerprint

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import PreTrainedTokenizerBase

    from ftcli.data import Prepared
    from ftcli.evaluation import EvalResult, Metric


@dataclass
class Run:
    """Everything `fit()` needs, built by `setup()`."""

    cfg: Config  # with the values ftcli resolved (data.max_length)
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by the Accelerator (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer  # Accelerate's wrapper
    scheduler: torch.optim.lr_scheduler.LRScheduler  # Accelerate's wrapper
    train_dl: DataLoader
    eval_dl: DataLoader | None  # None: no labelled validation split
    metric: Metric | None
    metric_name: str
    prepared: Prepared
    plan: Plan
    reporter: Reporter
    tokenizer: PreTrainedTokenizerBase
    output_dir: Path
    clipping: Literal["folded", "separate", "off"]  # folded into fused AdamW, Accelerate's clip, or none
    sparse_embedding: torch.nn.Parameter | None = None  # see optim.sparse_grad_embedding
    class_weights: torch.Tensor | None = None  # per-label loss weights on the device (train.class_weights)
    last_eval: EvalResult | None = None  # the latest evaluation (its predictions feed the per-class report)
    eval_split: str | None = None
    stop: StopFlag | None = None
    on_eval: Callable[[int, dict[str, Any]], bool] | None = None  # see train()

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.cfg.to_dict(), self.prepared.manifest.key, self.plan.step_batch)


def setup(cfg: Config, accelerator, reporter: Reporter) -> Run:
    import torch
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from ftcli import evaluation
    from ftcli.data import eval_dataloader, give_tokenizer, load_tokenizer, prepare, train_dataloader
    from ftcli.runtime import single_process_launch_hint
    from ftcli.training import optim

    t = cfg.train
    reporter.enabled = reporter.enabled and accelerator.is_main_process
    _check_same_config(cfg, accelerator)
    if hint := single_process_launch_hint(accelerator):
        reporter.warn(hint)
    if cfg.model.peft is not None:
        from ftcli.adapters import require_peft

        require_peft()  # before minutes of tokenizing and loading
    set_seed(t.seed)

    # One process tokenizes (or finds the cache); the others wait on the cache's file lock, then
    # load the result. A lock rather than `main_process_first`: a barrier would time out when a
    # first tokenization of a large dataset outlasts the collective timeout; a lock never does.
    prepared = prepare(cfg, log=reporter.info, progress=reporter.progress)
    if accelerator.is_main_process:
        _report_cache(reporter, prepared, cfg.data.validation_name)
    # From here on the config holds the values ftcli resolved: the run's config.yaml and the
    # checkpoints' fingerprint say what was used, not `null`.
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": prepared.max_length})})
    eval_split = _eval_split(cfg, prepared, reporter)

    tokenizer = load_tokenizer(cfg.model)
    give_tokenizer(tokenizer, prepared.pad_token_id)  # the exported tokenizer pads as training did
    model = _model(cfg, accelerator, prepared, reporter)
    if t.compile:
        model = torch.compile(model, dynamic=True)
    optimizer, not_fused = optim.make_optimizer(model, t, accelerator.device.type)
    train_dl = train_dataloader(cfg.data, t, accelerator, prepared.split(cfg.data.train_split), prepared)
    eval_dl = None
    if eval_split:
        eval_dl = eval_dataloader(cfg.data, accelerator, prepared.split(eval_split), prepared,
                                  batch_size=t.eval_batch_size, workers=t.dataloader_workers)
    name = evaluation.metric_name(cfg.eval, prepared.label_names, prepared.is_multi_label)
    metric = evaluation.load_metric(name) if eval_dl is not None else None
    if cfg.calibration.after_train:
        if eval_dl is None:
            raise FtcliError("calibration.after_train: needs a labelled validation split (data.validation_split) to "
                             "calibrate on")
        if prepared.is_regression:
            raise FtcliError("calibration.after_train: a regression model has no probabilities to calibrate or "
                             "thresholds to tune; remove it")
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

    clipping, why_separate = _clipping(t, optimizer, accelerator, not_fused, reporter)
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
    from ftcli.adapters import parameter_counts

    _report_start(run, parameter_counts(accelerator.unwrap_model(model)), torch.get_num_threads(), why_separate)
    return run


def _model(cfg: Config, accelerator, prepared: Prepared, reporter: Reporter):
    """The model to train: pretrained, padded as the data is, with the fast CPU path where it is
    proven equal, gradient checkpointing and adapters as the config says."""
    from ftcli import modeling
    from ftcli.training import fastops

    t = cfg.train
    model = modeling.load_model(cfg.model, prepared.label_names, prepared.is_multi_label, prepared.pad_token_id)
    fast = t.fast_dropout and accelerator.device.type == "cpu" and cfg.model.attn_implementation == "auto"
    if fast:
        fastops.install(model)
        if declined := fastops.verify(model, _sample_batch(cfg, accelerator, prepared)):
            reporter.info(f"fast CPU attention declined for {model.config.model_type}: {declined}; the model's own "
                          "attention is used")
    if t.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise FtcliError(f"train.gradient_checkpointing: transformers has no gradient checkpointing for "
                             f"{model.config.model_type} models; turn it off")
        # Non-reentrant: works with frozen inputs (adapters) and replays dropout's random numbers.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.peft is not None:
        from ftcli.adapters import add_adapters
        from ftcli.data import locate

        model = add_adapters(model, cfg.model, locate(cfg.model.name_or_path, "model.name_or_path"))
        if fast:
            fastops.swap_dropout(model)  # the adapters' own dropouts
    return model


def _eval_split(cfg: Config, prepared: Prepared, reporter: Reporter) -> str | None:
    """The split evaluated during training: the labelled validation split, or None (with a
    warning) when the data has none. A split named in the config must exist."""
    train_info = prepared.split_info(cfg.data.train_split)
    if not train_info.labeled:
        raise FtcliError(f"{train_info.source}: the training split has no labels")
    eval_split = cfg.data.validation_name if cfg.data.validation_name in prepared.manifest.splits else None
    if eval_split and not prepared.split_info(eval_split).labeled:
        eval_split = None
    if eval_split is None and named_validation(cfg):
        raise FtcliError(f"data.validation_split: the data has no labelled split {cfg.data.validation_name!r} "
                         f"(splits: {', '.join(prepared.manifest.splits)}); name one, or give a fraction (0.1) "
                         "or a row count (200) to hold out")
    if eval_split is None:
        reporter.warn(f"no labelled split {cfg.data.validation_name!r}: training without evaluation "
                      "(data.validation_split: 0.1 holds out a tenth of the training rows)")
    return eval_split


def _clipping(t: TrainConfig, optimizer, accelerator, not_fused: str | None, reporter: Reporter) -> tuple[str, str | None]:
    """How the gradient norm is clipped: `folded` into fused AdamW, `separate` (Accelerate's
    clip, with the reason), or `off`. Asked for folding but not possible: say so."""
    from ftcli.training import optim

    if t.max_grad_norm is None:
        return "off", None
    if not t.fused_clipping:
        return "separate", "train.fused_clipping is off"
    clipping, why_separate = optim.clipping_mode(optimizer, accelerator.distributed_type,
                                                 accelerator.scaler is not None)
    if clipping == "separate":
        why_separate = not_fused or why_separate
        reporter.warn(f"gradient clipping takes a separate pass: {why_separate}")
    return clipping, why_separate


def _sample_batch(cfg: Config, accelerator, prepared: Prepared) -> dict:
    """Up to 8 training rows, padded as training pads them: the batch that proves a fast path
    equal to the model's own. Read from the dataset directly, so no sampler draws a number."""
    from ftcli.data import collator

    ds = prepared.split(cfg.data.train_split)
    names = prepared.manifest.model_input_names
    rows = [{k: ds[i][k] for k in [*names, "labels", "length"]} for i in range(min(8, len(ds)))]
    batch = collator(cfg.data, accelerator, prepared)(rows)
    batch.pop("labels")
    return batch


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
        counts = prepared.split_info(train_split).classes
        if prepared.is_multi_label:  # BCE's pos_weight: negatives per positive of each label
            rows = prepared.split_info(train_split).docs  # the counts are of documents
            return [(rows - counts[name]) / counts[name] if counts[name] else 1.0 for name in names]
        total = sum(counts.values())
        # A class without training rows gets weight 0: it never appears in the loss anyway.
        return [total / (len(names) * counts[name]) if counts[name] else 0.0 for name in names]
    if len(t.class_weights) != len(names):
        raise FtcliError(f"train.class_weights: {len(t.class_weights)} weights for {len(names)} labels "
                         f"({', '.join(names)}); give one weight per label, in that order, or use auto")
    return list(t.class_weights)


def _check_same_config(cfg: Config, accelerator) -> None:
    """Every process of a launch must train with the same settings (one config file read on
    several machines, a sweep's trial values): otherwise they would silently train different
    things with averaged gradients, or hang in a collective."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    mine = scalar_settings(cfg.to_dict())
    everyone = gather_object([mine])
    differ = sorted({k for other in everyone for k in mine.keys() | other.keys() if mine.get(k) != other.get(k)})
    if differ:
        key = differ[0]
        values = ", ".join(f"process {i}: {other.get(key)!r}" for i, other in enumerate(everyone))
        raise FtcliError(f"the {len(everyone)} processes of this launch were given different configs: {key} ({values})"
                         + (f" and {len(differ) - 1} more setting(s)" if len(differ) > 1 else "")
                         + "; give every process the same config file and --set options")


def named_validation(cfg: Config) -> bool:
    """Whether `data.validation_split` names a split other than the default one: that split must
    exist (a typo must not train without evaluation). Without the default `validation` split a
    run trains without evaluation, with a warning."""
    return cfg.data.holdout is None and cfg.data.validation_split != DataConfig.model_fields["validation_split"].default


def _rows(info, windowed: bool) -> str:
    """A split's size in words: rows, or documents and the windows they make."""
    return f"{info.docs:,} documents in {info.rows:,} windows" if windowed else f"{info.rows:,} rows"


def _report_cache(reporter: Reporter, prepared, validation: str) -> None:
    splits = ", ".join(f"{s} {_rows(i, prepared.windowed)}" for s, i in prepared.manifest.splits.items())
    if prepared.hit:
        reporter.info(f"data: cache hit {prepared.path} ({splits})")
    else:
        reporter.info(f"data: tokenized in {prepared.seconds:.1f}s ({prepared.why_missed}) -> {prepared.path} ({splits})")
        for split in prepared.manifest.splits:  # the first time only: `ftcli prepare` shows it any time
            reporter.info(f"  {prepared.describe(split)}")
    if warning := prepared.absence_warning(validation):
        reporter.warn(warning)


def _report_start(run: Run, params: tuple[int, int], threads: int, why_separate: str | None) -> None:
    from ftcli.runtime import precision_label

    cfg, acc, plan, prep, eval_split = run.cfg, run.accelerator, run.plan, run.prepared, run.eval_split
    labels = prep.label_names or ["(regression)"]
    clipping = {"off": "off", "folded": f"norm {cfg.train.max_grad_norm}, folded into fused AdamW",
                "separate": f"norm {cfg.train.max_grad_norm}, separate pass ({why_separate})"}[run.clipping]
    run.reporter.summary("ftcli train", [
        ("model", f"{cfg.model.name_or_path} ({_parameters(*params)})"),
        *([("adapters", _adapters(cfg.model))] if cfg.model.peft is not None else []),
        ("pad token", f"id {prep.pad_token_id}, {prep.pad_token_source}"),
        ("labels", ", ".join(labels)),
        ("data", f"{cfg.data.train_split} {_rows(prep.split_info(cfg.data.train_split), prep.windowed)}"
                 + (f", {eval_split} {_rows(prep.split_info(eval_split), prep.windowed)}" if eval_split else "")
                 + (f"; windows of {prep.max_length} tokens, stride {prep.manifest.stride}, "
                    f"{cfg.eval.window_pooling} pooling, one weight per {cfg.train.window_weight}"
                    if prep.windowed else "")),
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


def _parameters(trainable: int, total: int) -> str:
    def count(n: int) -> str:
        for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if n >= size:
                return f"{n / size:.3g}{unit}"
        return str(n)

    if trainable == total:
        return f"{count(total)} parameters"
    return f"{count(total)} parameters, {count(trainable)} trainable ({100 * trainable / total:.2g}%)"


def _adapters(model) -> str:
    p = model.peft
    targets = "auto (every attention and MLP projection)" if p.target_modules == "auto" else ", ".join(p.target_modules)
    return (f"{p.method} r {p.r}, alpha {p.alpha:g}, dropout {p.dropout:g}, on {targets}; head trained in full; "
            f"base in {model.dtype}; export {p.export}")


def scalar_settings(obj: dict[str, Any]) -> dict[str, Any]:
    """The config as flat scalars by dotted key: what trackers (tensorboard hparams) take, and what
    processes compare to agree on their settings."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flatten(obj).items()}
