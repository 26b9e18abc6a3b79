"""The data pipeline: where models and tokenizers come from (`sources`), reading the raw files
(`reading`), which id pads (`pad_token`), labels (`labels`), tokenizing (`encoding`, with the BERT shortcut `bert_ascii`),
building and caching the prepared dataset (`build`, `cache`, described by `manifest`), and the
dataloaders that batch it (`batching`).

`prepare()` is the entry point. Other packages use only the names exported here; importing this
package stays cheap (no torch, datasets or transformers until a function runs).
"""

from ftcli.data.batching import SortedSampler, collator, eval_dataloader, train_dataloader, with_row_ids
from ftcli.data.build import class_counts, hold_out, no_label_rows, split_texts
from ftcli.data.cache import Prepared, check_windows, default_max_length, prepare, tokenizer_fingerprint
from ftcli.data.labels import is_multi_label, label_ids, label_names
from ftcli.data.manifest import Manifest, SplitStats
from ftcli.data.pad_token import PadToken, give_tokenizer, resolve as resolve_pad_token
from ftcli.data.reading import check_columns, check_splits, load_raw
from ftcli.data.sources import (
    load_tokenizer, locate, model_config_json, position_limit, resolve_package_path, tokenizer_folder,
)

__all__ = [
    "Manifest", "PadToken", "Prepared", "SortedSampler", "SplitStats", "check_columns", "check_splits",
    "check_windows", "class_counts", "collator",
    "default_max_length", "eval_dataloader", "give_tokenizer", "hold_out", "is_multi_label", "label_ids",
    "label_names", "load_raw", "load_tokenizer", "locate",
    "model_config_json", "no_label_rows", "position_limit", "prepare", "resolve_package_path", "resolve_pad_token",
    "split_texts", "tokenizer_fingerprint", "tokenizer_folder",
    "train_dataloader", "with_row_ids",
]
