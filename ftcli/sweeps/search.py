"""`ftcli sweep`: hyperparameter search with Optuna, over ordinary ftcli runs.

Each trial is a normal run folder, `<output_dir>/trials/NNNN/`, trained by `ftcli.training.train`
from the sweep's config with the trial's values set. The prepared data is shared through the
cache (trials that change no preprocessing setting hit it). The study lives in a database, so:

- the same command run again continues the study, keeping finished trials;
- a trial that died with its process (kill -9, a lost machine) is found by its stopped heartbeat,
  marked failed and retried once with the same values; so is one stopped by SIGINT/SIGTERM;
- several `ftcli sweep` processes pointed at one storage share the study: Optuna hands each
  trial to one worker, and the study stops when `sweep.trials` trials have finished.

Outputs in `output_dir`: `sweep.db` (the default storage), `sweep.json` (every trial),
`best.yaml` (the best trial's full config, which `ftcli train --config` runs as is),
`sweep.png` (optimization history and parameter importances), `trials/`.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ftcli import owners
from ftcli.config import Config
from ftcli.console import Reporter
from ftcli.errors import FtcliError, TrainingInterrupted
from ftcli.files import atomic_write_text, check_output_folder
from ftcli.quiet import quiet
from ftcli.sweeps.report import TrialTable, plot_study
from ftcli.sweeps.study import (OWNER, RESUME_FROM, RETRY_OF, check_same_search, check_storage_path, finished,
                                metric_of, open_storage, pruner, retry_failed, sampler, storage_url, suggest,
                                trial_config)

TRIALS = "trials"
SWEEP_CONFIG = "sweep_config.yaml"  # in output_dir: the sweep's resolved config, --set included
SWEEP_ARGS = "sweep_args.json"  # in output_dir: the command's own options (--trials, --storage, ...)


def load_sweep(folder: str | Path, overrides: list[str]) -> tuple[Config, dict[str, Any]]:
    """For `ftcli sweep --resume DIR`: the config and options the sweep in DIR was started with
    (what the first command saved), `overrides` on top. Its output_dir is DIR as given."""
    from ftcli.config import load_config

    folder = Path(folder)
    if not (folder / SWEEP_CONFIG).is_file():
        raise FtcliError(f"--resume {folder}: no {SWEEP_CONFIG} here, so this is not a sweep's output_dir (or its "
                         "sweep started before ftcli saved it); run the sweep's command with --config again")
    cfg = load_config(folder / SWEEP_CONFIG, [*overrides, f"train.output_dir={folder}"])
    try:
        args = json.loads((folder / SWEEP_ARGS).read_text())
    except (OSError, ValueError):
        args = {}
    return cfg, {k: args.get(k) for k in ("trials", "timeout_s", "storage", "study_name")}


def resume_command(out: Path, processes: int) -> str:
    """The command that continues the sweep in `out`, with every option it was started with."""
    from ftcli.training import relaunch

    return relaunch(f"ftcli sweep --resume {shlex.quote(str(out))}", processes)


def _save_invocation(cfg: Config, out: Path, **args: Any) -> None:
    """What `sweep --resume` needs to continue: the resolved config and the command's options."""
    atomic_write_text(out / SWEEP_CONFIG, f"# The config of the sweep in {out}, as resolved (--set included).\n"
                      f"# Continue it with: ftcli sweep --resume {shlex.quote(str(out))}\n"
                      + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(out / SWEEP_ARGS, json.dumps(args, indent=2) + "\n")


def sweep(
    config: Config | str | Path,
    *,
    trials: int | None = None,
    timeout_s: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run (or continue) the study that `config`'s `sweep:` section describes until it has
    `trials` finished trials; return the summary also written to `output_dir/sweep.json`.

    Under `accelerate launch` with several processes, every trial trains on all of them: the main
    process owns the study, draws each trial's values and sends them to the others before the
    trial starts; the others train what they are sent until the main process says the sweep is
    over (`_follow`)."""
    from ftcli.config import as_config
    from ftcli.runtime import process_group

    cfg = as_config(config)
    if cfg.sweep is None:
        raise FtcliError(f"{cfg.source_path or 'config'}: no sweep section; add sweep: {{space: {{train.learning_rate: "
                         "{low: 1.0e-5, high: 1.0e-4, log: true}}}} (see the README's Sweeps section)")
    out = Path(cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        raise FtcliError(f"train.output_dir {str(out)!r} is a file, not a folder; choose another output_dir")
    check_output_folder(out, "train.output_dir")
    url = storage_url(cfg.sweep, out, storage)
    check_storage_path(url)  # before the data is prepared, not after
    reporter = reporter or Reporter()
    from ftcli.data import check_splits, prepare

    check_splits(cfg.data, cfg.data.train_split, cfg.data.validation_name)
    with process_group(cfg.train) as group:
        main = group is None or group.is_main_process
        reporter.enabled = reporter.enabled and main
        # Once for the whole sweep: every trial that changes no preprocessing setting hits this
        # cache. (Every process calls it: one builds under the cache's lock, the others then hit.)
        prepared = prepare(cfg, log=reporter.info, progress=reporter.progress)
        reporter.info(f"data: {'cache hit' if prepared.hit else f'tokenized in {prepared.seconds:.1f}s'} {prepared.path}")
        metric = metric_of(cfg, prepared.label_names, prepared.is_multi_label)
        shared = Shared(group)
        if not main:
            return _follow(cfg, shared)
        try:
            out.mkdir(parents=True, exist_ok=True)
            _save_invocation(cfg, out, trials=trials, timeout_s=timeout_s, storage=storage, study_name=study_name)
            summary = _lead(cfg, metric, url, shared, reporter, wanted=trials or cfg.sweep.trials,
                            timeout_s=timeout_s or cfg.sweep.timeout_s, study_name=study_name,
                            processes=group.num_processes if group is not None else 1)
        except BaseException as exc:
            if not shared.in_trial:  # the others wait for a message, not inside a trial's collectives
                shared.send({"error": str(exc) or type(exc).__name__})
            raise
        shared.send({"summary": summary})
        return summary


class Shared:
    """Messages from the main process to the others of a launch, between trials (a no-op for
    one process). `in_trial`: whether the processes are inside a trial's training, where a
    failure reaches every process by itself."""

    def __init__(self, group):
        self.many = group is not None and group.num_processes > 1
        self.in_trial = False

    def send(self, message: dict[str, Any] | None) -> dict[str, Any] | None:
        if not self.many:
            return message
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([message], from_process=0)[0]


def _follow(cfg: Config, shared: Shared) -> dict[str, Any]:
    """A process other than the main one: train each trial the main process sends, with its
    values, until it sends the summary."""
    from ftcli.training import train

    while True:
        message = shared.send(None)
        if "summary" in message:
            return message["summary"]
        if "error" in message:
            error = FtcliError(f"sweep stopped on the main process: {message['error']}")
            error.main_process = False  # the main process reports it
            raise error
        train(trial_config(cfg, message["values"], Path(message["run"])), overwrite=message["overwrite"],
              resume=message["resume"], reporter=Reporter(enabled=False))


def _lead(cfg: Config, metric: str, url: str, shared: Shared, reporter: Reporter, *, wanted: int,
          timeout_s: int | None, study_name: str | None, processes: int) -> dict[str, Any]:
    """The main process: open the study, run trials until it has `wanted` finished ones."""
    import optuna

    sw, out = cfg.sweep, Path(cfg.train.output_dir)
    name = study_name or sw.study or out.name or "ftcli"
    out.mkdir(parents=True, exist_ok=True)
    with quiet("optuna"):
        study = optuna.create_study(
            storage=open_storage(url, sw.heartbeat_s), sampler=sampler(sw, cfg.train.seed), pruner=pruner(sw),
            study_name=name, direction="minimize" if metric == "loss" else "maximize", load_if_exists=True)
        check_same_search(study, cfg, metric)
        study.sampler = sampler(sw, cfg.train.seed, drawn=len(study.get_trials(deepcopy=False)))
        retried = retry_failed(study)
        table = TrialTable(reporter, metric, wanted)
        table.start(study, url, retried)

        def objective(trial) -> float:
            return _run_trial(trial, cfg, metric, out, table, shared)

        if finished(study) < wanted:
            from optuna.study import MaxTrialsCallback
            from optuna.trial import TrialState

            try:
                with _no_interrupt_warning():
                    study.optimize(objective, timeout=timeout_s, gc_after_trial=True, callbacks=[
                        MaxTrialsCallback(wanted, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                        lambda study, trial: (table.trial_finished(trial), _after_trial(study, cfg, out, metric, url)),
                    ])
            except TrainingInterrupted as exc:
                table.close()
                raise TrainingInterrupted(
                    f"sweep interrupted: the running trial wrote a checkpoint and continues from it; continue the "
                    f"study with: {resume_command(out, processes)}" if str(exc) else "", exc.exit_code) from None
        summary = _after_trial(study, cfg, out, metric, url)
        table.finish(summary)
    return summary


def _run_trial(trial, cfg: Config, metric: str, out: Path, table: TrialTable, shared: Shared) -> float:
    import optuna

    from ftcli.training import train

    values = suggest(trial, cfg)
    run, resume = out / TRIALS / f"{trial.number:04d}", None
    earlier = trial.user_attrs.get(RESUME_FROM)
    if earlier and _has_checkpoint(Path(earlier)):  # a retry continues where the failed attempt stopped
        run, resume = Path(earlier), "auto"
    trial.set_user_attr("run_dir", str(run))
    trial.set_user_attr(OWNER, owners.this_process())  # so a later command can tell it died
    table.trial_started(trial.number, values)

    def report(step: int, result: dict[str, Any]) -> bool:
        trial.report(result[metric], step)
        table.trial_progress(trial.number, step, result[metric])
        return trial.should_prune()

    start = time.perf_counter()
    overwrite = resume is None and run.exists()  # a fresh attempt replaces what a failed one left
    shared.send({"values": values, "run": str(run), "overwrite": overwrite, "resume": resume})
    shared.in_trial = True
    result = train(trial_config(cfg, values, run), overwrite=overwrite, resume=resume, on_eval=report,
                   reporter=Reporter(enabled=False))  # the sweep reports trials itself
    shared.in_trial = False
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
    trial.set_user_attr("steps", result["steps"])
    trial.set_user_attr("data_cache", result["data"]["cache"])
    if result["eval"] is None or metric not in result["eval"]:
        raise FtcliError(f"sweep.metric: the trial's validation reported no {metric!r}; choose one of "
                         f"{', '.join(result['eval'] or {}) or '(no validation split)'}")
    if result["stopped"] == "pruned":
        raise optuna.TrialPruned()
    return result["eval"][metric]


def _has_checkpoint(run: Path) -> bool:
    from ftcli.training import find_checkpoint

    try:
        return find_checkpoint(run, "auto", lambda message: None) is not None
    except FtcliError:
        return False


def _after_trial(study, cfg: Config, out: Path, metric: str, url: str) -> dict[str, Any]:
    """Rewrite sweep.json and best.yaml, drop models that are no longer the best, redraw sweep.png."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        best = study.best_trial
    rows = [{
        "number": t.number, "state": t.state.name.lower(), "params": t.params, "value": t.value,
        "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "seconds": t.user_attrs.get("seconds"), "steps": t.user_attrs.get("steps"),
        "data_cache": t.user_attrs.get("data_cache"), "run_dir": t.user_attrs.get("run_dir"),
        "retry_of": t.user_attrs.get(RETRY_OF),
    } for t in trials]
    summary = {
        "study": study.study_name, "storage": url, "metric": metric, "direction": study.direction.name.lower(),
        "trials": rows,
        "finished": sum(r["state"] in ("complete", "pruned") for r in rows),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "failed": sum(r["state"] == "fail" for r in rows),
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "run_dir": best.user_attrs.get("run_dir"), "config": str(out / "best.yaml")} if best else None,
    }
    atomic_write_text(out / "sweep.json", json.dumps(summary, indent=2, default=str))
    if best is not None:
        best_cfg = trial_config(cfg, best.params, out / "best")
        header = (f"# ftcli train --config {out / 'best.yaml'}\n#\n# The best trial ({best.number}) of study "
                  f"{study.study_name!r}: {metric} {best.value:.4f}. Written by ftcli sweep.\n")
        atomic_write_text(out / "best.yaml", header + yaml.safe_dump(
            {k: v for k, v in best_cfg.to_dict().items() if k != "sweep"}, sort_keys=False))
    if cfg.sweep.keep_models == "best":
        keep = {best.user_attrs.get("run_dir")} if best else set()
        # Run folders a trial may still continue in: running ones, and failed ones with a retry to come.
        retried = {t.user_attrs.get(RETRY_OF) for t in trials}
        keep |= {t.user_attrs.get("run_dir") for t in trials if t.state == TrialState.RUNNING
                 or (t.state == TrialState.FAIL and RETRY_OF not in t.user_attrs and t.number not in retried)}
        keep |= {t.user_attrs.get(RESUME_FROM) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        for t in trials:
            run = t.user_attrs.get("run_dir")
            if run and run not in keep and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                for entry in ("model", "checkpoints"):
                    shutil.rmtree(Path(run) / entry, ignore_errors=True)
    plot_study(study, out / "sweep.png")
    return summary


@contextlib.contextmanager
def _no_interrupt_warning():
    """Optuna logs a trial that raised as a warning with its traceback. An interrupted trial
    (Ctrl-C, SIGTERM) is not a failure to show: ftcli says in one line how to continue. The
    filter is on Optuna's own logger, for the sweep only."""
    import logging

    class Interrupted(logging.Filter):
        follows = None  # the line Optuna writes next about the same trial

        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)):
                self.follows = record.getMessage().split(" failed with parameters")[0] + " failed with value"
                return False
            return not (self.follows and record.getMessage().startswith(self.follows))

    logger, dropped = logging.getLogger("optuna.study._optimize"), Interrupted()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)
