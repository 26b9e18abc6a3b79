"""A run folder (`train.output_dir`) as a whole: which run it holds, and resuming it by its path.

`ftcli train --resume RUN_DIR` continues the run in RUN_DIR with the config it saved
(`RUN_DIR/config.yaml`, the resolved config), so the command ftcli prints when a run is
interrupted resumes *that* run, whatever `--set` overrides started it.
"""

from __future__ import annotations

from pathlib import Path

from ftcli.checkpoint import CHECKPOINTS, STATE_FILE
from ftcli.config import Config, load_config
from ftcli.errors import FtcliError

CONFIG_FILE = "config.yaml"


def locate(resume: str) -> tuple[Path, Path | None]:
    """`--resume PATH`: the run folder, and the checkpoint to resume (None: its newest intact one)."""
    path = Path(resume)
    if not path.is_dir():
        raise FtcliError(f"--resume {resume}: no such run or checkpoint folder; give a train.output_dir, "
                         f"a folder under its {CHECKPOINTS}/, or auto")
    if (path / STATE_FILE).is_file() or path.parent.name == CHECKPOINTS:
        return path.parent.parent, path
    if (path / CONFIG_FILE).is_file() or (path / CHECKPOINTS).is_dir():
        return path, None
    raise FtcliError(f"--resume {resume}: neither a run folder (no {CONFIG_FILE}) nor a checkpoint "
                     f"(no {STATE_FILE}); give a train.output_dir or a folder under its {CHECKPOINTS}/")


def load_run_config(resume: str, overrides: list[str]) -> Config:
    """The config a run saved, for `--resume RUN_DIR` without `--config`. Overrides apply on top;
    output_dir is the run folder as given (the run may have been moved)."""
    run, _ = locate(resume)
    if not (run / CONFIG_FILE).is_file():
        raise FtcliError(f"--resume {resume}: {run / CONFIG_FILE} is missing, so the run's settings are unknown; "
                         "pass --config with the config it was started with")
    return load_config(run / CONFIG_FILE, [*overrides, f"train.output_dir={run}"])


def check_resume_target(cfg: Config, resume: str) -> Path | None:
    """For `--resume PATH` with a config: PATH must belong to the config's output_dir. Returns the
    checkpoint it names (None: the run's newest intact one)."""
    run, ckpt = locate(resume)
    out = Path(cfg.train.output_dir)
    if run.resolve() != out.resolve():
        raise FtcliError(f"--resume {resume}: belongs to the run in {str(run)!r}, but train.output_dir is "
                         f"{str(out)!r}; leave out --config to resume that run with its saved config, or "
                         f"--set train.output_dir={run}")
    return ckpt
