"""What scores rows for eval and predict (`--backend torch|onnx`): the trained PyTorch model, or
its ONNX export (`ftcli export`) in an ONNX Runtime session behind the call a transformers model
answers, `model(**batch).logits`. Either way the evaluation loop, its batching, pooling and
thresholds are the same code.

The export folder holds `model.onnx`, the tokenizer, the model's `config.json` (labels), the
thresholds and calibration it was made with, and `export.json` (ExportInfo). The graph's logits
are already divided by the temperature the model was calibrated with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ftcli.config import Config
from ftcli.errors import FtcliError
from ftcli.files import atomic_write_text

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"


@dataclass(frozen=True)
class ExportInfo:
    """What an export folder holds and how it was checked (`export.json`)."""

    format: str  # onnx
    quantize: str | None  # None (fp32) or int8
    model: str  # the trained model folder it was exported from
    inputs: list[str]  # the graph's inputs, in order
    temperature: float  # already applied inside the graph
    labels: list[str]
    problem_type: str  # single_label_classification, multi_label_classification or regression
    exporter: str
    opset: int
    parity: dict[str, Any] = field(default_factory=dict)  # the fp32 check: max_abs_diff, tolerance, rows, split
    quantized: dict[str, Any] = field(default_factory=dict)  # int8: metrics next to PyTorch's, speed-up

    def save(self, folder: Path) -> Path:
        path = folder / EXPORT_FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path


def export_folder(path: Path) -> Path:
    """The export folder `--model` names with `--backend onnx`: the folder itself when it holds
    model.onnx, else the default export of a run or model folder (`onnx/` in the run folder)."""
    path = Path(path)
    if (path / ONNX_FILE).is_file():
        return path
    run = path.parent if path.name == "model" and (path / "config.json").is_file() else path
    if (run / "onnx" / ONNX_FILE).is_file():
        return run / "onnx"
    raise FtcliError(f"--backend onnx: no ONNX export in {str(path)!r} (no {ONNX_FILE}); run `ftcli export "
                     f"{run} --format onnx` first, or pass --model with an export folder")


def read_export(folder: Path) -> ExportInfo:
    path = folder / EXPORT_FILE
    try:
        data = json.loads(path.read_text())
        return ExportInfo(**{k: data[k] for k in ExportInfo.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError) as exc:
        raise FtcliError(f"{path}: unreadable ({exc}); export the model again with ftcli export") from None


class OnnxClassifier:
    """An ONNX Runtime session answering `model(**batch).logits` (a float32 torch tensor).

    It uses as many threads as torch does in this process (`torch.get_num_threads()`, which ftcli
    and Accelerate set per process), so N processes on one machine do not oversubscribe it."""

    def __init__(self, folder: Path, threads: int | None = None):
        import onnxruntime as ort
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own warnings about unused initializers are not the user's business
        try:
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for a bad file
            raise FtcliError(f"{folder / ONNX_FILE}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:300]}); "
                             "export the model again") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **batch):
        import numpy as np
        import torch

        ids = batch["input_ids"]
        feed = {}
        for name in self.inputs:
            value = batch.get(name)
            feed[name] = (value.cpu().numpy() if value is not None else np.zeros(tuple(ids.shape), np.int64)).astype(np.int64)
        (logits,) = self.session.run(["logits"], feed)
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)))

    # the evaluation loop switches a torch model between modes; a session has none
    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self


BACKENDS = ("torch", "onnx")


@dataclass
class Scorer:
    """The model that scores rows, and the folder its labels, thresholds and temperature come
    from (the trained model folder, or the export folder)."""

    model: Any  # a transformers model, or an OnnxClassifier
    folder: Path
    temperature: float  # what run_eval divides logits by (1.0 for an export: its graph does it)
    onnx: bool
    in_graph: float = 1.0  # an export: the temperature its graph divides logits by

    @property
    def applied(self) -> float:
        """The temperature the scores carry, whoever divides by it (as summaries report it)."""
        return self.temperature * self.in_graph

    def prepare(self, accelerator, dataloader):
        """The model and dataloader through the Accelerator (a session only needs the batches)."""
        if self.onnx:
            return self.model, accelerator.prepare(dataloader)
        return accelerator.prepare(self.model, dataloader)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise FtcliError(f"--backend {backend!r}: use torch or onnx")


def find_model_dir(cfg: Config, model_dir: str | Path | None) -> Path:
    """`--model` as given, or the config's output_dir (its `model/` folder when it has one)."""
    folder = Path(model_dir) if model_dir else Path(cfg.train.output_dir)
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    return folder


def scoring_folder(backend: str, cfg: Config, model_dir: str | Path | None) -> Path:
    """The folder that scores rows: the trained model folder (`find_model_dir`), or (onnx) its
    export (`--model` names an export, or a run or model folder with one); checked before any
    work, with a one-line error when there is none."""
    check_backend(backend)
    if backend == "onnx":
        folder = export_folder(Path(model_dir or cfg.train.output_dir))
        read_export(folder)
        return folder
    folder = find_model_dir(cfg, model_dir)
    if not (folder / "config.json").is_file():
        from ftcli import modeling

        modeling.load_trained(folder)  # raises the one-line error naming the folder
    return folder


def load_scorer(folder: Path, onnx: bool, labels: list[str] | None, pad_token_id: int | None, base=None,
                warn=None) -> Scorer:
    """The Scorer for `folder` (from `scoring_folder`). `labels`: the data's, which the model's
    must be. `warn`: told when an export no longer matches its model's thresholds or calibration."""
    from ftcli import modeling
    from ftcli.evaluation.calibration import temperature_of

    if not onnx:
        return Scorer(modeling.load_trained(folder, labels, pad_token_id, base), folder, temperature_of(folder), False)
    info = read_export(folder)
    if labels is not None and list(info.labels) != list(labels):
        raise FtcliError(f"export {str(folder)!r} predicts labels {info.labels} but the data's labels are {labels}; "
                         "evaluate it with the config its model was trained with")
    if warn is not None and (stale := stale_files(folder, Path(info.model))):
        warn(f"{folder}: the model's {' and '.join(stale)} changed after this export; run ftcli export again to "
             "use them (the export's own are used)")
    return Scorer(OnnxClassifier(folder), folder, 1.0, True, in_graph=info.temperature)


def stale_files(export: Path, model: Path) -> list[str]:
    """The decision files (thresholds, calibration) that differ between an export and its model."""
    from ftcli.evaluation.calibration import CALIBRATION_FILE
    from ftcli.evaluation.thresholds import THRESHOLD_FILE

    if not (model / "config.json").is_file():
        return []

    def text(path: Path) -> str | None:
        return path.read_text() if path.is_file() else None

    return [name for name in (THRESHOLD_FILE, CALIBRATION_FILE) if text(export / name) != text(model / name)]
