"""`ftcli validate` (also `ftcli prepare --check`): a dry run of everything a run would find wrong
with its config and data before training: the config's own checks (done by loading it), the data
files, their columns and text, every row's labels, the held-out split, the tokenizer's files and
the metric names that `train.metric_for_best`, `sweep.metric` and `eval --require` use.

Nothing is tokenized, trained or written (the raw files are parsed into a temporary folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ftcli.config import Config
from ftcli.errors import FtcliError
from ftcli.gate import Requirement


def validate(cfg: Config, require: list[Requirement] = ()) -> dict[str, Any]:
    """Run the checks; return what a run would see (splits, labels, metrics). FtcliError at the
    first kind of problem found, naming every bad row of it as `prepare` does."""
    from ftcli import evaluation, gate
    from ftcli.data import (check_columns, check_splits, check_windows, hold_out, is_multi_label, label_ids,
                            label_names, load_raw, tokenizer_fingerprint, tokenizer_folder)
    from ftcli.quiet import quiet

    data, model = cfg.data, cfg.model
    if model.peft is not None:
        from ftcli.adapters import require_peft

        require_peft()
    check_splits(data, data.train_split, *([data.validation_name] if data.holdout is not None else []))
    tokenizer_fingerprint(tokenizer_folder(model))  # the tokenizer's files are there
    check_windows(cfg)  # a fast tokenizer, and a stride that fits
    with tempfile.TemporaryDirectory(prefix="ftcli-validate-") as tmp:
        with quiet("datasets"):
            raw = load_raw(data, Path(tmp))
        if data.train_split not in raw:
            raise FtcliError(f"split {data.train_split!r} is not in the data (available: {', '.join(raw)}); "
                             "fix data.train_split")
        check_columns(data, raw)
        names = label_names(model, data, raw)
        multi = is_multi_label(model, data, raw)
        ids = {split: label_ids(model, data, ds, split, names, multi) for split, ds in raw.items()}
        splits = {split: _split(ids[split][0] if ids[split][1] else None, ds.num_rows, names, multi)
                  for split, ds in raw.items()}
        holdout = None
        if data.holdout is not None:
            holdout, rows = hold_out(data, raw, names, ids[data.train_split][0])
            train_ids = ids[data.train_split][0]
            for split, positions in rows.items():
                part = train_ids[positions] if multi else train_ids.take(positions)
                splits[split] = _split(part, len(positions), names, multi)
    name = evaluation.metric_name(cfg.eval, names, multi)
    metrics = ["loss", *evaluation.metric_keys(name)]
    validation = data.validation_name
    if cfg.train.metric_for_best is not None and cfg.train.metric_for_best not in metrics:
        raise FtcliError(f"train.metric_for_best: {cfg.train.metric_for_best!r} is not computed by metric {name!r}; "
                         f"choose one of {', '.join(metrics)}")
    if cfg.sweep is not None:
        from ftcli.sweeps import metric_of

        metric_of(cfg, names, multi)
    gate.check_names(list(require), metrics)
    warnings = []
    if validation not in splits:
        warnings.append(f"no {validation!r} split: train will run without evaluation")
    elif not splits[validation]["labeled"]:
        warnings.append(f"split {validation!r} has no labels: train will not evaluate on it")
    return {"config": cfg.source_path, "labels": names,
            "problem_type": "regression" if model.is_regression else "multi_label" if multi else "single_label",
            "splits": splits, "holdout": holdout, "metric": name, "metrics": metrics, "warnings": warnings,
            "require": [str(r) for r in require]}


def _split(ids, rows: int, names: list[str], multi: bool) -> dict[str, Any]:
    from ftcli.data import class_counts, no_label_rows

    if ids is None:
        return {"rows": rows, "labeled": False, "classes": None, "no_label": None}
    return {"rows": rows, "labeled": True, "classes": class_counts(ids, names) if names else None,
            "no_label": no_label_rows(ids) if multi else None}


def describe(result: dict[str, Any]) -> list[str]:
    """The lines `ftcli validate` prints."""
    kind = result["problem_type"].replace("_", "-")
    lines = [f"{result['config']}: ok, nothing tokenized or trained",
             f"  labels ({kind}): {', '.join(result['labels']) or '(regression)'}"]
    for split, info in result["splits"].items():
        line = f"  {split}: {info['rows']:,} rows"
        if not info["labeled"]:
            line += ", unlabelled"
        elif info["classes"]:
            line += "; " + ", ".join(f"{n} {c:,}" for n, c in info["classes"].items())
        if info.get("no_label") is not None:
            line += f"; {info['no_label']:,} with no label"
        lines.append(line)
    lines.append(f"  metrics ({result['metric']}): {', '.join(result['metrics'])}"
                 + (f"; --require {' '.join(result['require'])}: names ok" if result["require"] else ""))
    return lines
