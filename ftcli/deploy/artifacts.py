"""A trained run's deployable pieces, found from the path a user gives: the model folder, the
resolved config the run saved, its exports, and which files of them go to the Hub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftcli.config import Config, load_config
from ftcli.errors import FtcliError
from ftcli.evaluation import EXPORT_FILE, ONNX_FILE

RUN_CONFIG = "config.yaml"  # what `ftcli train` writes into the run folder (ftcli.training.run_dir)
TRAINING_FACTS = "ftcli_run.json"
"""In a model folder: what the model card says about its training (base model, data fingerprint,
resolved config, validation metrics and per-class table), written by `ftcli train`."""

WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.onnx", "*.onnx.data")
"""Not copied from a model folder into an export: the export carries its own graph."""


@dataclass(frozen=True)
class TrainedRun:
    run: Path  # the run folder (train.output_dir)
    model: Path  # its model folder


def locate_run(path: str | Path, command: str) -> TrainedRun:
    """RUN_DIR as given to export, calibrate or push: a run folder holding `model/`, or the model
    folder itself. One line naming the path when it holds no trained model."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        return TrainedRun(path, path / "model")
    if (path / "config.json").is_file() and not (path / ONNX_FILE).is_file():
        return TrainedRun(path.parent, path)
    what = "does not exist" if not path.exists() else "holds no trained model (no model/config.json)"
    raise FtcliError(f"{command}: {str(path)!r} {what}; give a train.output_dir of a finished `ftcli train` run")


def run_config(run: TrainedRun, command: str, overrides: list[str] = ()) -> Config:
    """The resolved config the run saved (its data, labels and settings), with `overrides`."""
    path = run.run / RUN_CONFIG
    if not path.is_file():
        raise FtcliError(f"{command}: {path} is missing, so the run's data is unknown; pass --config with the config "
                         "it was trained with")
    return load_config(path, list(overrides))


def exports_of(run: TrainedRun) -> list[Path]:
    """The run's export folders (`onnx/`, `onnx-int8/`, ...): those holding a checked export."""
    return sorted(p for p in run.run.glob("onnx*") if (p / EXPORT_FILE).is_file() and (p / ONNX_FILE).is_file())


def upload_plan(run: TrainedRun) -> list[tuple[Path, str]]:
    """What `ftcli push` uploads: every file of the model folder at the repository's root, and
    each export's files under its folder name (`onnx/model.onnx`, ...). Hidden files, reports
    written into an export by `eval --backend onnx`, and anything else in the run folder
    (checkpoints, logs, predictions) stay local."""
    plan = [(f, f.relative_to(run.model).as_posix()) for f in sorted(run.model.rglob("*"))
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(run.model).parts)]
    for export in exports_of(run):
        plan += [(f, f"{export.name}/{f.name}") for f in sorted(export.iterdir())
                 if f.is_file() and not f.name.startswith(".")]
    return plan
