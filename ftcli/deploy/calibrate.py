"""`ftcli calibrate` (and `calibration.after_train`): fit temperature scaling and tune thresholds
on the validation split, keep them with the model, and say what they changed.

Temperature first: thresholds are tuned on the calibrated probabilities, the ones predict will
compare them with. Both are measured on the split they were fitted on, so "after" is optimistic
for thresholds; `ftcli eval --split test` gives the held-out figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftcli.config import CalibrationConfig, Config
from ftcli.console import Reporter
from ftcli.errors import FtcliError


@dataclass(frozen=True)
class Calibrated:
    """What calibration fitted on `split` and what it changed. `before`/`after`: the metrics at
    the model's defaults (temperature 1, threshold 0.5 or the most probable label) and with what
    was fitted. `temperature`: the one fitted, or (not fitting one) the one the model keeps.
    `thresholds`: the thresholds.json record (None: not tuned)."""

    split: str
    rows: int
    temperature: float | None
    ece_before: float | None
    ece_after: float | None
    thresholds: dict[str, Any] | None
    before: dict[str, float]
    after: dict[str, float]
    skipped: list[str]  # what was asked but does not apply to this model, or is now stale, and why
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(config: Config | str | Path, *, model_dir: str | Path | None = None, split: str | None = None,
              reporter: Reporter | None = None) -> Calibrated:
    """`ftcli calibrate`: evaluate the trained model on `split` (default: the validation split)
    once, then do what `config.calibration` says (temperature, thresholds), save the results
    with the model, draw the reliability diagram and refresh the model card."""
    from ftcli import modeling
    from ftcli.config import as_config
    from ftcli.data import check_splits, eval_dataloader, prepare
    from ftcli.evaluation import find_model_dir, run_eval
    from ftcli.runtime import accelerator_session

    cfg = as_config(config)
    folder = find_model_dir(cfg, model_dir)
    if not (folder / "config.json").is_file():
        modeling.load_trained(folder)  # the one-line error naming the folder
    split = split or cfg.data.validation_name
    check_splits(cfg.data, split)
    _check_request(cfg.calibration)
    reporter = reporter or Reporter()
    with accelerator_session(cfg.train) as accelerator:
        reporter.enabled = reporter.enabled and accelerator.is_main_process
        prepared = prepare(cfg, log=reporter.info, progress=reporter.progress)
        info = prepared.split_info(split)
        if not info.labeled:
            raise FtcliError(f"calibrate: split {split!r} ({info.source}) has no labels; calibrate on a labelled split")
        if prepared.is_regression:
            raise FtcliError("calibrate: a regression model has no probabilities to calibrate or thresholds to tune")
        model = modeling.load_trained(folder, prepared.label_names, prepared.pad_token_id, cfg.model)
        dl = eval_dataloader(cfg.data, accelerator, prepared.split(split), prepared,
                             batch_size=cfg.train.eval_batch_size, workers=cfg.train.dataloader_workers)
        model, dl = accelerator.prepare(model, dl)
        with reporter.progress(len(dl), f"calibrate on {split}", every=1, unit="batches", min_interval=10) as bar:
            evaluated = run_eval(accelerator, model, dl, None, regression=False, progress=bar, keep_outputs=True,
                                 keep_predictions=True, multi_label=prepared.is_multi_label,
                                 pooling=cfg.eval.window_pooling)
        result = fit_and_save(cfg, evaluated, prepared.label_names, prepared.is_multi_label, split, folder,
                              save=accelerator.is_main_process)
        accelerator.wait_for_everyone()
    print_calibrated(reporter, result)
    return result


def _check_request(calibration: CalibrationConfig) -> None:
    if not calibration.temperature and not calibration.thresholds:
        raise FtcliError("calibrate: calibration.temperature and calibration.thresholds are both false: nothing to "
                         "fit; set one of them true")


def fit_and_save(cfg: Config, evaluated, labels: list[str], multi: bool, split: str, folder: Path,
                 save: bool = True) -> Calibrated:
    """Fit what `cfg.calibration` asks on an evaluation at temperature 1 (`run_eval` with
    keep_outputs and keep_predictions), and (`save`: the main process) keep it in `folder`:
    calibration.json, reliability_diagram.png, thresholds.json, and the refreshed model card."""
    import numpy as np
    import torch

    from ftcli.evaluation import (Calibration, Thresholds, confidences, decide, expected_calibration_error,
                                  fit_temperature, load_metric, metric_name, nll, pool, reliability, save_thresholds,
                                  tune_binary, tune_per_label)
    from ftcli.plot import plot_reliability

    wanted = cfg.calibration
    pooling = cfg.eval.window_pooling
    refs = np.asarray(evaluated.references)
    windows = multi and evaluated.window_logits is not None
    logits = evaluated.window_logits if windows else evaluated.logits
    documents = evaluated.window_documents if windows else None

    def scores(temperature: float) -> np.ndarray:
        scaled = logits.double() / temperature
        if not multi:
            return torch.softmax(scaled, -1).numpy()
        p = torch.sigmoid(scaled)
        return (pool(p, documents, pooling).values.double() if windows else p).numpy()

    metric = load_metric(metric_name(cfg.eval, labels, multi))
    binary = not multi and len(labels) == 2
    default = Thresholds((0.5,) * len(labels), "default") if multi else Thresholds(None, "default")

    def measured(probabilities: np.ndarray, thresholds: Thresholds) -> dict[str, float]:
        predicted = decide(probabilities, thresholds, multi)
        values = metric.compute(predictions=predicted, references=refs.astype(np.int64))
        if binary and wanted.threshold_metric not in values:  # the metric the threshold is chosen for, too
            kind = {"f1": "accuracy_f1", "accuracy": "accuracy", "matthews_correlation": "matthews"}
            values[wanted.threshold_metric] = load_metric(kind[wanted.threshold_metric]).compute(
                predictions=predicted, references=refs.astype(np.int64))[wanted.threshold_metric]
        return {k: round(float(v), 6) for k, v in values.items()}

    from ftcli.evaluation import read_thresholds, temperature_of

    skipped: list[str] = []
    files: list[str] = []
    before_scores = scores(1.0)
    before = measured(before_scores, default)
    temperature = ece_before = ece_after = None
    chosen_scores = before_scores
    if not wanted.temperature and (prior := temperature_of(folder)) != 1.0:
        # the saved temperature stays: thresholds are tuned for the probabilities predict will see
        temperature, chosen_scores = prior, scores(prior)
    if wanted.temperature:
        temperature = fit_temperature(logits, torch.as_tensor(refs), multi, documents, pooling)
        chosen_scores = scores(temperature)
        ece_before = expected_calibration_error(*confidences(before_scores, refs, multi), wanted.bins)
        ece_after = expected_calibration_error(*confidences(chosen_scores, refs, multi), wanted.bins)
        calibration = Calibration(
            temperature=temperature, ece_before=round(ece_before, 6), ece_after=round(ece_after, 6),
            nll_before=round(nll(logits, torch.as_tensor(refs), multi, 1.0, documents, pooling), 6),
            nll_after=round(nll(logits, torch.as_tensor(refs), multi, temperature, documents, pooling), 6),
            split=split, rows=int(len(refs)), bins=wanted.bins)
        if save:
            files.append(str(calibration.save(folder)))
            files.append(str(plot_reliability(reliability(*confidences(before_scores, refs, multi), wanted.bins),
                                              reliability(*confidences(chosen_scores, refs, multi), wanted.bins),
                                              temperature, folder / "reliability_diagram.png",
                                              f"{split}: {folder}")))
    if wanted.temperature and not wanted.thresholds and (saved := read_thresholds(folder, labels, multi)) is not None:
        skipped.append(f"thresholds: {saved.source} was tuned for other probabilities; run ftcli calibrate with "
                       "thresholds to tune them for this temperature")
    record = None
    tuned = default
    if wanted.thresholds and (multi or binary):
        if multi:
            values = tune_per_label(chosen_scores, refs)
            tuned = Thresholds(values, "tuned")
            record = {"kind": "per_label", "thresholds": dict(zip(labels, values)), "metric": "f1"}
        else:
            value = tune_binary(chosen_scores, refs, wanted.threshold_metric)
            tuned = Thresholds((value,), "tuned")
            record = {"kind": "binary", "threshold": value, "positive_label": labels[1],
                      "metric": wanted.threshold_metric}
    elif wanted.thresholds:
        skipped.append(f"thresholds: {len(labels)} single labels take the most probable one (thresholds are for "
                       "multi-label data and two labels)")
    after = measured(chosen_scores, tuned)
    if record is not None:
        record.update(split=split, rows=int(len(refs)), temperature=temperature or 1.0,
                      before={k: before[k] for k in after}, after=after, chosen_by="ftcli calibrate")
        if save:
            files.append(str(save_thresholds(folder, record)))
    if save:
        from ftcli.deploy.card import write_card

        files.append(str(write_card(folder)))
    return Calibrated(split=split, rows=int(len(refs)), temperature=temperature,
                      ece_before=None if ece_before is None else round(ece_before, 6),
                      ece_after=None if ece_after is None else round(ece_after, 6), thresholds=record,
                      before=before, after=after, skipped=skipped, files=files)


def print_calibrated(reporter: Reporter, result: Calibrated) -> None:
    if result.ece_before is not None:
        reporter.info(f"temperature {result.temperature:.4f} on {result.split} ({result.rows:,} rows): expected "
                      f"calibration error {result.ece_before:.4f} -> {result.ece_after:.4f}")
    elif result.temperature is not None:
        reporter.info(f"temperature {result.temperature:.4f}: the one saved with the model, kept")
    if result.thresholds is not None:
        t = result.thresholds
        chosen = (f"{t['threshold']:.2f} on p({t['positive_label']}) for {t['metric']}" if t["kind"] == "binary"
                  else ", ".join(f"{k} {v:.2f}" for k, v in t["thresholds"].items()))
        reporter.info(f"thresholds: {chosen}")
    changed = ", ".join(f"{k} {result.before[k]:.4f} -> {v:.4f}" for k, v in result.after.items())
    reporter.info(f"{result.split} (the split fitted on): {changed}")
    for line in result.skipped:
        reporter.info(f"not fitted: {line}")
    if result.files:
        reporter.info(f"saved with the model: {', '.join(Path(f).name for f in result.files)}")
