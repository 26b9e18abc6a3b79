"""Metrics, the evaluation loop, `ftcli eval` and `ftcli predict`.

Predictions from every process are collected with `gather_for_metrics`, which drops the rows
Accelerate repeats to even out the last batch: N processes give exactly the 1-process numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ftcli.config import Config
from ftcli.console import Reporter
from ftcli.errors import FtcliError

METRIC_SCRIPT = Path(__file__).parent / "metrics" / "ftcli_glue.py"


def metric_name(cfg: Config, label_names: list[str]) -> str:
    if cfg.eval.metric != "auto":
        return cfg.eval.metric
    if not label_names:
        return "regression"
    return "accuracy_f1" if len(label_names) == 2 else "multiclass"


def metric_keys(name: str) -> tuple[str, ...]:
    """The values metric `name` computes (e.g. accuracy, f1)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ftcli_glue_keys", METRIC_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KINDS[module.kind_of(name)]


def load_metric(name: str):
    """The GLUE-compatible metric shipped with ftcli, through `evaluate` (loaded by path: works
    offline). `keep_in_memory`: processes computing at once never share a cache file."""
    import evaluate

    return evaluate.load(str(METRIC_SCRIPT), name, keep_in_memory=True)


def eval_dataloader(cfg: Config, accelerator, ds, pad_token_id: int, max_length: int, regression: bool,
                    *, with_row_ids: bool = False, batch_size: int | None = None):
    """Rows sorted by length, in global batches of eval_batch_size x processes (split by Accelerate)."""
    import torch
    from torch.utils.data import DataLoader

    from ftcli.data import Collator, SortedSampler
    from ftcli.distributed import dataloader_kwargs, pad_multiple, padding_mode

    collator = Collator(
        pad_token_id=pad_token_id, padding=padding_mode(cfg, accelerator), max_length=max_length,
        buckets=tuple(cfg.data.pad_buckets), multiple_of=pad_multiple(cfg, accelerator),
        with_row_ids=with_row_ids, regression=regression,
    )
    return DataLoader(
        ds,
        batch_size=(batch_size or cfg.train.eval_batch_size) * accelerator.num_processes,
        sampler=SortedSampler(ds["length"]),
        collate_fn=collator,
        # A private generator: creating this loader's iterator must not draw from the global RNG
        # (that would change dropout masks in training and break exact resume).
        generator=torch.Generator(),
        **dataloader_kwargs(cfg, accelerator),
    )


def run_eval(accelerator, model, dataloader, metric, *, regression: bool, progress=None,
             keep_outputs: bool = False) -> dict[str, Any]:
    """Evaluate `model` on a prepared dataloader. Returns the metrics, the mean loss and the
    number of rows; with `keep_outputs`, also the gathered logits and row ids (for predict)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model.eval()
    preds, refs, losses, logits_all, rows_all = [], [], [], [], []
    with torch.no_grad():
        for batch in dataloader:
            labels = batch.pop("labels")
            row_ids = batch.pop("row_ids", None)
            with accelerator.autocast():
                logits = model(**batch).logits
            logits = logits.float()
            if regression:
                pred = logits.squeeze(-1)
                loss = F.mse_loss(pred, labels.float(), reduction="none")
            else:
                pred = logits.argmax(-1)
                loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            gathered = accelerator.gather_for_metrics(
                (pred, labels, loss) + ((logits, row_ids) if keep_outputs else ())
            )
            preds.append(gathered[0].cpu())
            refs.append(gathered[1].cpu())
            losses.append(gathered[2].cpu())
            if keep_outputs:
                logits_all.append(gathered[3].cpu())
                rows_all.append(gathered[4].cpu())
            if progress is not None:
                progress.update(1)
    model.train()
    p = torch.cat(preds).numpy() if preds else np.zeros(0)
    r = torch.cat(refs).numpy() if refs else np.zeros(0)
    out: dict[str, Any] = {"samples": int(len(p))}
    # Unlabelled splits (GLUE test sets) carry -1 (classification) or NaN (regression).
    labelled = bool(len(r)) and bool((~np.isnan(r)).all() if regression else (r >= 0).all())
    if labelled and len(p):
        out["loss"] = float(torch.cat(losses).double().mean())
        out.update({k: float(v) for k, v in metric.compute(predictions=p, references=r).items()})
    if keep_outputs:
        out["_logits"] = torch.cat(logits_all) if logits_all else torch.zeros(0)
        out["_rows"] = torch.cat(rows_all) if rows_all else torch.zeros(0, dtype=torch.long)
    return out


def find_model_dir(cfg: Config, model_dir: str | Path | None) -> Path:
    """`--model` as given, or the config's output_dir (its `model/` folder when it has one)."""
    folder = Path(model_dir) if model_dir else Path(cfg.train.output_dir)
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    return folder


def evaluate_model(cfg: Config, *, model_dir: str | Path | None = None, split: str | None = None,
                   reporter: Reporter | None = None) -> dict[str, Any]:
    """`ftcli eval`: evaluate a trained model on a split of the prepared data."""
    from ftcli import data, modeling
    from ftcli.distributed import accelerator_session

    folder = find_model_dir(cfg, model_dir)
    if not (folder / "config.json").is_file():
        modeling.load_trained(folder)  # raises the one-line error naming the folder
    split = split or cfg.eval.split
    data.check_splits(cfg.data, split)
    reporter = reporter or Reporter()
    with accelerator_session(cfg) as accelerator:
        reporter.enabled = reporter.enabled and accelerator.is_main_process
        prepared = data.prepare(cfg, log=reporter.info)  # one builder per cache key (file lock)
        info = prepared.split_info(split)
        if not info["labeled"]:
            raise FtcliError(
                f"split {split!r} ({info['source']}) has no labels to evaluate against; use `ftcli predict`"
            )
        model = modeling.load_trained(folder, prepared.label_names)
        name = metric_name(cfg, prepared.label_names)
        metric = load_metric(name)
        dl = eval_dataloader(cfg, accelerator, prepared.split(split), prepared.pad_token_id, prepared.max_length,
                             prepared.is_regression)
        model, dl = accelerator.prepare(model, dl)
        start = time.perf_counter()
        with reporter.progress(len(dl), f"eval {split}", every=1, unit="batches", min_interval=10) as bar:
            result = run_eval(accelerator, model, dl, metric, regression=prepared.is_regression, progress=bar)
        return {
            "split": split,
            "model": str(folder),
            "metric": name,
            "processes": accelerator.num_processes,
            "seconds": round(time.perf_counter() - start, 3),
            **result,
        }


def read_predict_input(cfg: Config, input_file: str | Path) -> dict:
    """A `data.files`-style description of the input, checked: format and columns."""
    from ftcli.config import DATA_FORMATS

    path = Path(input_file)
    if not path.is_file():
        raise FtcliError(f"--input: file {str(path)!r} not found")
    if path.suffix.lower() not in DATA_FORMATS:
        raise FtcliError(f"--input: unsupported extension {path.suffix!r}; use one of {', '.join(sorted(DATA_FORMATS))}")
    return {"predict": str(path)}


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON Lines or CSV by extension, written atomically."""
    import csv
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                fields = list(rows[0]) if rows else ["row", "label", "label_id"]
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
            else:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
