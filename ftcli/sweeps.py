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
from ftcli.config import Config, SweepConfig, config_from_dict
from ftcli.console import Reporter, format_duration
from ftcli.errors import FtcliError, TrainingInterrupted
from ftcli.files import atomic_write_text, check_output, check_output_folder

TRIALS = "trials"
RETRY_OF = "ftcli_retry_of"  # user attribute of a trial that re-runs a failed one
OWNER = "ftcli_owner"  # user attribute: the host and process running the trial (ftcli.owners)
RESUME_FROM = "ftcli_resume_from"  # user attribute of a retry: the failed trial's run folder, continued
SWEEP_CONFIG = "sweep_config.yaml"  # in output_dir: the sweep's resolved config, --set included
SWEEP_ARGS = "sweep_args.json"  # in output_dir: the command's own options (--trials, --storage, ...)


def metric_of(cfg: Config, label_names: list[str], multi_label: bool = False) -> str:
    """`sweep.metric`, checked against what validation reports, or the last metric `eval.metric`
    computes (f1 for two labels, f1_macro for more, spearmanr for regression)."""
    from ftcli.evaluation import metric_keys, metric_name

    name = metric_name(cfg.eval, label_names, multi_label)
    available = [*metric_keys(name), "loss"]
    if cfg.sweep.metric is None:
        return available[-2]
    if cfg.sweep.metric not in available:
        raise FtcliError(f"sweep.metric: {cfg.sweep.metric!r} is not reported by metric {name!r}; choose one of "
                         f"{', '.join(available)}")
    return cfg.sweep.metric


def storage_url(sweep: SweepConfig, out: Path, override: str | None) -> str:
    url = override or sweep.storage or f"sqlite:///{out / 'sweep.db'}"
    if not url.startswith(("sqlite://", "postgresql", "mysql", "oracle", "mssql", "journal:")):
        raise FtcliError(f"sweep storage {url!r}: give an SQLAlchemy URL (sqlite:///sweep.db, postgresql://..., "
                         "mysql://...) or journal:PATH")
    return url


def check_storage_path(url: str) -> None:
    """A file storage (journal:PATH, sqlite:///PATH) must be creatable where it points."""
    if url.startswith("journal:"):
        check_output(Path(url.removeprefix("journal:")), "sweep storage journal:")
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        check_output(Path(url.removeprefix("sqlite:///").partition("?")[0]), "sweep storage sqlite:///")


def open_storage(url: str, heartbeat_s: int):
    """The study's storage; database storages record heartbeats, so a dead worker's trial is found."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings_off():  # heartbeats are marked experimental
            return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
    except Exception as exc:  # noqa: BLE001 - a missing driver, a bad URL, an unreachable server: all bad input
        raise FtcliError(f"sweep storage {url!r}: cannot open it ({str(exc).splitlines()[0][:200]})") from None


def _sampler(sweep: SweepConfig, seed: int, drawn: int = 0):
    """The sampler, seeded from `train.seed` and the number of trials the study already has
    (`drawn`): a new study is reproducible, and a continued one draws new points instead of
    replaying the first run's (a sampler seeded alike would)."""
    import optuna

    seed = seed + 1_000_003 * drawn

    if sweep.sampler == "grid":
        missing = [k for k, spec in sweep.space.items() if spec.choices is None]
        if missing:
            raise FtcliError(f"sweep.sampler: grid needs choices for every searched setting; give choices for "
                             f"{', '.join(missing)}")
        return optuna.samplers.GridSampler({k: spec.choices for k, spec in sweep.space.items()}, seed=seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(sweep: SweepConfig):
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                           n_warmup_steps=sweep.pruner_warmup_steps)
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, sweep.pruner_warmup_steps))
    return optuna.pruners.NopPruner()


def suggest(trial, cfg: Config) -> dict[str, Any]:
    """The trial's values, typed like the settings they replace (integers stay integers)."""
    values = {}
    for key, spec in cfg.sweep.space.items():
        section, _, name = key.partition(".")
        current = getattr(getattr(cfg, section), name)
        if spec.choices is not None:
            values[key] = trial.suggest_categorical(key, spec.choices)
        elif isinstance(current, int) and not isinstance(current, bool):
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log,
                                            step=int(spec.step) if spec.step else 1)
        else:
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
    return values


def trial_config(cfg: Config, values: dict[str, Any], run: Path) -> Config:
    """The sweep's config with the trial's values and its own run folder, without the sweep section."""
    raw = cfg.to_dict()
    raw.pop("sweep")
    for key, value in values.items():
        section, _, name = key.partition(".")
        raw[section][name] = value
    raw["train"]["output_dir"] = str(run)
    return config_from_dict(raw, source=cfg.source_path or "<config>")


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
    from ftcli.run_dir import relaunch

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
    from ftcli.build import check_splits
    from ftcli.cache import prepare

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
    with _quiet_optuna():
        study = optuna.create_study(
            storage=open_storage(url, sw.heartbeat_s), sampler=_sampler(sw, cfg.train.seed), pruner=_pruner(sw),
            study_name=name, direction="minimize" if metric == "loss" else "maximize", load_if_exists=True)
        _check_same_search(study, cfg, metric)
        study.sampler = _sampler(sw, cfg.train.seed, drawn=len(study.get_trials(deepcopy=False)))
        retried = _retry_failed(study)
        table = TrialTable(reporter, metric, wanted)
        table.start(study, url, retried)

        def objective(trial) -> float:
            return _run_trial(trial, cfg, metric, out, table, shared)

        if _finished(study) < wanted:
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
    from ftcli import checkpoint

    try:
        return checkpoint.find(run, "auto", lambda message: None) is not None
    except FtcliError:
        return False


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _check_same_search(study, cfg: Config, metric: str) -> None:
    """A study continued by another command must search the same thing for the same metric."""
    attrs = study.user_attrs
    search = {"metric": metric, "space": {k: v.model_dump() for k, v in cfg.sweep.space.items()}}
    if not attrs.get("ftcli_search"):
        study.set_user_attr("ftcli_search", search)
        return
    if attrs["ftcli_search"] != search:
        raise FtcliError(f"study {study.study_name!r} searches {json.dumps(attrs['ftcli_search'], sort_keys=True)}, "
                         "not this config's sweep; use another --study name or output_dir")


def _fail_orphans(study) -> None:
    """Mark failed, at once, the running trials whose process is gone from this machine (killed):
    a heartbeat takes twice `sweep.heartbeat_s` to say so, and a journal storage has none."""
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001 - Study offers no public handle on its storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER)
        if isinstance(owner, dict) and owners.gone(owner):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, t.number)  # noqa: SLF001
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _retry_failed(study) -> list[int]:
    """Queue each failed trial's values once more (a trial that died with its process, or was
    interrupted); a retry that fails too is not retried again."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    _fail_orphans(study)
    with warnings_off():  # marked experimental
        fail_stale_trials(study)  # running trials whose heartbeat stopped: their process died
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    queued = []
    for t in trials:
        if t.state == TrialState.FAIL and RETRY_OF not in t.user_attrs and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number, RESUME_FROM: t.user_attrs.get("run_dir")},
                                skip_if_exists=False)
            queued.append(t.number)
    return queued


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
    _plot(study, out / "sweep.png")
    return summary


def _plot(study, path: Path) -> None:
    """Optimization history (each finished trial's value, and the best so far) and, from two
    completed trials on, parameter importances, drawn on a Figure of ftcli's own: full parameter
    names, no legend over the bars, and no pyplot state touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    from ftcli.plot import save_png

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    importances = {}
    if len(complete) >= 2 and complete[0].params:
        import optuna

        with warnings_off():
            try:
                importances = optuna.importance.get_param_importances(study)
            except (ValueError, RuntimeError):
                importances = {}  # e.g. every trial drew the same value
    metric = study.user_attrs.get("ftcli_search", {}).get("metric", "value")
    names = list(importances)
    width = 6.0 + (max(6.0, 2.5 + 0.09 * max(map(len, names)) + 3.0) if names else 0.0)
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if names else 1, squeeze=False, width_ratios=[6.0, width - 6.0] if names else None)[0]
    history = axes[0]
    numbers, values = [t.number for t in complete], [t.value for t in complete]
    better = max if study.direction.name == "MAXIMIZE" else min
    best, running = [], None
    for v in values:
        running = v if running is None else better(running, v)
        best.append(running)
    history.plot(numbers, values, "o", color="#1f77b4", label="trial")
    history.step(numbers, best, where="post", color="#d62728", label="best so far")
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if pruned:  # at the last value each reported before it was stopped
        shown = [t for t in pruned if t.intermediate_values]
        history.plot([t.number for t in shown], [t.intermediate_values[max(t.intermediate_values)] for t in shown],
                     "x", color="#7f7f7f", label="pruned")
    history.set_xlabel("trial")
    history.set_ylabel(metric)
    history.set_title(f"optimization history ({study.direction.name.lower()} {metric})", fontsize=10)
    history.grid(alpha=0.3)
    history.legend(loc="best", fontsize=8)
    if names:
        bars = axes[1]
        shown = names[::-1]  # the most important on top
        bars.barh(range(len(shown)), [importances[n] for n in shown], color="#1f77b4")
        bars.set_yticks(range(len(shown)), shown, fontsize=9)
        for i, n in enumerate(shown):
            bars.annotate(f"{importances[n]:.2f}", (importances[n], i), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=8)
        bars.set_xlim(0, max(importances.values()) * 1.2 or 1)
        bars.set_xlabel(f"importance for {metric}")
        bars.set_title("parameter importances", fontsize=10)
    save_png(fig, path, dpi=100)


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its heartbeats and matplotlib plots experimental
        yield


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


@contextlib.contextmanager
def _quiet_optuna():
    """ftcli reports trials itself; Optuna's own INFO lines are silenced for the sweep only."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


class TrialTable:
    """The trials as they run: a live table at a terminal, one line per event in a pipe."""

    def __init__(self, reporter: Reporter, metric: str, wanted: int):
        self.reporter, self.metric, self.wanted = reporter, metric, wanted
        self.rows: dict[int, dict[str, Any]] = {}
        self.live = None
        self.start_time = time.perf_counter()

    def start(self, study, url: str, retried: list[int]) -> None:
        done = _finished(study)
        self.reporter.info(f"sweep {study.study_name!r} ({url}): {self.metric} ({study.direction.name.lower()}), "
                           f"{done}/{self.wanted} trials finished"
                           + (f"; retrying failed trial(s) {', '.join(map(str, retried))}" if retried else ""))
        if self.reporter.enabled and self.reporter.mode == "rich":
            from rich.live import Live

            self.live = Live(self._render(), console=self.reporter._console, refresh_per_second=2, transient=False)
            self.live.__enter__()

    def trial_started(self, number: int, values: dict[str, Any]) -> None:
        self.rows[number] = {"values": values, "state": "running", "step": None, "value": None}
        self._event(f"trial {number} started: {_fmt_values(values)}")

    def trial_progress(self, number: int, step: int, value: float) -> None:
        self.rows[number].update(step=step, value=value)
        self._event(f"trial {number} step {step}: {self.metric} {value:.4f}")

    def trial_finished(self, trial) -> None:
        state = trial.state.name.lower()
        row = self.rows.setdefault(trial.number, {"values": trial.params, "step": None, "value": None})
        row.update(state=state, value=trial.value if trial.value is not None else row["value"])
        shown = f"{self.metric} {row['value']:.4f}" if row["value"] is not None else "no result"
        self._event(f"trial {trial.number} {state}: {shown} after {trial.user_attrs.get('steps', '?')} steps "
                    f"(data: {trial.user_attrs.get('data_cache', '?')}, {trial.user_attrs.get('seconds', '?')}s)")

    def close(self) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def finish(self, summary: dict[str, Any]) -> None:
        for row in summary["trials"]:
            if row["number"] in self.rows:
                self.rows[row["number"]].update(state=row["state"], value=row["value"] or self.rows[row["number"]]["value"])
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)
        best = summary["best"]
        self.reporter.info(
            f"sweep done: {summary['finished']} finished ({summary['pruned']} pruned, {summary['failed']} failed) "
            f"in {format_duration(time.perf_counter() - self.start_time)}"
            + (f"; best trial {best['number']}: {self.metric} {best['value']:.4f} {_fmt_values(best['params'])}; "
               f"train it again with: ftcli train --config {best['config']}" if best else ""))

    def _event(self, line: str) -> None:
        if self.live is not None:
            self.live.update(self._render())
        else:
            self.reporter.info(line)

    def _render(self):
        from rich.table import Table

        table = Table(title=f"trials ({self.metric})", title_justify="left")
        for column in ("trial", "state", "step", self.metric, "values"):
            table.add_column(column)
        for number, row in sorted(self.rows.items()):
            table.add_row(str(number), row["state"], str(row["step"] or ""),
                          f"{row['value']:.4f}" if row["value"] is not None else "", _fmt_values(row["values"]))
        return table


def _fmt_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in values.items())
