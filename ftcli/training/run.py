"""`ftcli train`: the Hugging Face course's Accelerate loop, made configurable.

Three layers, top to bottom: `train()` (here) checks the request, opens an Accelerator, resumes
and writes the outputs; `setup()` (ftcli.training.setup) builds everything; `fit()`
(ftcli.training.loop) is the loop. The same code runs on one CPU, one or several GPUs, several
machines or a TPU, under `accelerate launch -m ftcli train`. What the run folder holds:
ftcli.training.run_dir.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Callable

import yaml

from ftcli.config import Config, as_config
from ftcli.console import Reporter, format_duration
from ftcli.errors import EXIT_SIGINT, EXIT_SIGTERM, FtcliError, TrainingInterrupted
from ftcli.files import atomic_write_text
from ftcli.training import checkpoint, run_dir
from ftcli.training.loop import fit
from ftcli.training.setup import Run, named_validation, scalar_settings, setup
from ftcli.training.signals import StopFlag
from ftcli.training.state import TrainState


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
    from ftcli.data import check_splits
    from ftcli.runtime import accelerator_session, check_trackers

    cfg = as_config(config)
    reporter = reporter or Reporter()
    out = Path(cfg.train.output_dir)
    if resume and overwrite:
        raise FtcliError("--resume and --overwrite exclude each other: continue the run, or replace it")
    spec = "auto" if resume in (None, "auto") else str(run_dir.check_resume_target(cfg, resume) or "auto")
    check_splits(cfg.data, cfg.data.train_split)
    if named_validation(cfg):
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
            acc.init_trackers(out.name or "ftcli", config=scalar_settings(run.cfg.to_dict()))

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
    report = _class_report(run, final_eval, fresh=exported["from"] == "last")
    peft = cfg.model.peft
    run_dir.export_model(acc, run.model, run.tokenizer, out / "model", peft.export if peft else None)
    written = None
    if acc.is_main_process:
        if report:
            from ftcli.evaluation import write_report

            written = str(write_report(out / "eval" / run.eval_split, report,
                                       f"{run.eval_split}, step {report['step']}: {out / 'model'}"))
        _describe_model(run, final_eval, _final_metrics(final_eval), report)
    calibrated = _calibrate(run) if cfg.calibration.after_train else None
    summary = {
        "output_dir": str(out),
        "model_dir": str(out / "model"),
        "processes": acc.num_processes,
        "global_batch": run.plan.step_batch,  # rows per optimizer step, all processes
        "planned_steps": run.plan.total_steps,
        "mixed_precision": acc.mixed_precision,
        "metric": run.metric_name,
        "data": {"cache": "hit" if run.prepared.hit else "built", "key": run.prepared.manifest.key},
        "resumed_from": str(ckpt) if ckpt else None,
        **result,
        "exported": exported,
        "best": {"metric": best.metric, "value": best.value, "step": best.step, "checkpoint": best.checkpoint}
        if best else None,
        "eval": _final_metrics(final_eval) if final_eval else None,
        "per_class": report["per_class"] if report else None,
        **({"calibration": calibrated.to_dict()} if calibrated else {}),
    }
    if acc.is_main_process:
        if written:
            summary["report"] = written
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


def _final_metrics(final_eval: dict[str, Any] | None) -> dict[str, Any]:
    """The final evaluation's metrics, without its log-record fields."""
    return {k: v for k, v in (final_eval or {}).items() if k not in ("type", "time", "epoch", "split", "step")}


def _describe_model(run: Run, final_eval: dict[str, Any] | None, metrics: dict[str, Any],
                    report: dict[str, Any] | None) -> None:
    """Main process: what the model card tells about this training, kept in the model folder
    with the confusion matrix image, and the card itself (ftcli.deploy.card)."""
    import shutil

    from ftcli import __version__
    from ftcli.deploy import CONFUSION_IMAGE, TrainingFacts, write_card

    cfg, prepared, model = run.cfg, run.prepared, run.output_dir / "model"
    data = cfg.data
    TrainingFacts(
        base_model=cfg.model.name_or_path, base_revision=cfg.model.revision,
        data_source=data.path + (f" ({data.name})" if data.name else "") if data.path
        else ", ".join(f"{k}: {Path(v).name}" for k, v in (data.files or {}).items()),
        data_fingerprint=prepared.manifest.key,
        splits={name: prepared.split_info(name).docs for name in prepared.manifest.splits},
        labels=list(prepared.label_names),
        problem_type="regression" if prepared.is_regression else "multi_label" if prepared.is_multi_label
        else "single_label",
        text_columns=list(data.text_columns), max_length=data.max_length, long_texts=data.long_texts,
        config=cfg.to_dict(), eval_split=run.eval_split if final_eval else None,
        eval_step=(final_eval or {}).get("step"), metrics=metrics,
        per_class=report["per_class"] if report else None, ftcli_version=__version__,
    ).save(model)
    drawn = run.output_dir / "eval" / str(run.eval_split) / CONFUSION_IMAGE  # by write_report, just before
    if report and drawn.is_file():
        shutil.copy2(drawn, model / CONFUSION_IMAGE)
    write_card(model)


def _calibrate(run: Run):
    """`calibration.after_train`: `ftcli calibrate` on the validation split, with the final
    model still in memory (every process evaluates; the main one saves)."""
    from ftcli.deploy import fit_and_save, print_calibrated
    from ftcli.evaluation import run_eval
    from ftcli.training.fastops import standard_attention

    with standard_attention(run.accelerator.unwrap_model(run.model)):
        evaluated = run_eval(run.accelerator, run.model, run.eval_dl, None, regression=False, keep_outputs=True,
                             keep_predictions=True, multi_label=run.prepared.is_multi_label,
                             pooling=run.cfg.eval.window_pooling)
    result = fit_and_save(run.cfg, evaluated, run.prepared.label_names, run.prepared.is_multi_label, run.eval_split,
                          run.output_dir / "model", save=run.accelerator.is_main_process)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        print_calibrated(run.reporter, result)
    return result


def _class_report(run: Run, final_eval: dict[str, Any] | None, *, fresh: bool) -> dict[str, Any] | None:
    """The per-class report of the exported model on the validation split (classification). The
    latest evaluation's predictions when they belong to the exported weights; else (the best
    checkpoint's weights, or a run resumed after its last evaluation) one evaluation more."""
    from ftcli.evaluation import per_class_report, run_eval
    from ftcli.training.fastops import standard_attention

    if run.eval_dl is None or not run.prepared.label_names or final_eval is None:
        return None
    multi = run.prepared.is_multi_label
    if not fresh or run.last_eval is None:
        with standard_attention(run.accelerator.unwrap_model(run.model)):
            run.last_eval = run_eval(run.accelerator, run.model, run.eval_dl, run.metric, regression=False,
                                     keep_predictions=True, multi_label=multi, threshold=run.cfg.eval.threshold,
                                     pooling=run.cfg.eval.window_pooling)
    metrics = {k: v for k, v in final_eval.items() if k not in ("type", "time", "epoch", "seconds")}
    return {**metrics, **per_class_report(run.last_eval.predictions, run.last_eval.references,
                                          run.prepared.label_names, multi)}
