"""The Optuna study behind `ftcli sweep`: its storage, sampler and pruner, the values a trial
draws, and the bookkeeping of failed and orphaned trials (retried once with the same values)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ftcli import owners
from ftcli.config import Config, SweepConfig, with_values
from ftcli.errors import FtcliError
from ftcli.files import check_output
from ftcli.quiet import quiet

RETRY_OF = "ftcli_retry_of"  # user attribute of a trial that re-runs a failed one
OWNER = "ftcli_owner"  # user attribute: the host and process running the trial (ftcli.owners)
RESUME_FROM = "ftcli_resume_from"  # user attribute of a retry: the failed trial's run folder, continued


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
    attempt = 0
    while True:
        try:
            with quiet("warnings"):  # heartbeats are marked experimental
                return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
        except Exception as exc:  # noqa: BLE001 - a missing driver, a bad URL, an unreachable server: all bad input
            # Workers started together on a new database race to create its tables: the loser sees
            # "UNIQUE constraint failed: alembic_version" (or a locked file) and opens it again.
            racing = any(s in str(exc) for s in ("alembic_version", "already exists", "database is locked"))
            attempt += 1
            if not racing or attempt == 5:
                raise FtcliError(f"sweep storage {url!r}: cannot open it ({str(exc).splitlines()[0][:200]})") from None
            time.sleep(0.5 * attempt)


def sampler(sweep: SweepConfig, seed: int, drawn: int = 0):
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


def pruner(sweep: SweepConfig):
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
        current = cfg
        for part in key.split("."):  # model.peft.r: a setting of a section inside a section
            current = getattr(current, part)
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
    return with_values(cfg, {**values, "train.output_dir": str(run), "sweep": None}, origin="sweep trial")


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def check_same_search(study, cfg: Config, metric: str) -> None:
    """A study continued by another command must search the same thing for the same metric."""
    attrs = study.user_attrs
    search = {"metric": metric, "space": {k: v.model_dump() for k, v in cfg.sweep.space.items()}}
    if not attrs.get("ftcli_search"):
        study.set_user_attr("ftcli_search", search)
        return
    if attrs["ftcli_search"] != search:
        raise FtcliError(f"study {study.study_name!r} searches {json.dumps(attrs['ftcli_search'], sort_keys=True)}, "
                         "not this config's sweep; use another --study name or output_dir")


def fail_orphans(study) -> None:
    """Mark failed, at once, the running trials whose process is gone from this machine (killed):
    a heartbeat takes twice `sweep.heartbeat_s` to say so, and a journal storage has none."""
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001 - Study offers no public handle on its storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER)
        if isinstance(owner, dict) and owners.gone(owner):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, t.number)  # noqa: SLF001
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def retry_failed(study) -> list[int]:
    """Queue each failed trial's values once more (a trial that died with its process, or was
    interrupted); a retry that fails too is not retried again."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_orphans(study)
    with quiet("warnings"):  # marked experimental
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
