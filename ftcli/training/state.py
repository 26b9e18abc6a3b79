"""Where a training run stands, typed, and how a checkpoint records it.

`TrainState` is what the loop advances and what a checkpoint's `ftcli_state.json` stores (with
the run's `Fingerprint` and the checksums of the checkpoint's files), as versioned JSON:

    {"version": 2, "state": {...TrainState...}, "fingerprint": {...}, "files": {...}}

Version 1 (ftcli 0.1: the state's keys at the top level, `format: 1`) is read and converted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ftcli.errors import FtcliError

STATE_VERSION = 2


@dataclass
class Best:
    """The best evaluation so far by `train.metric_for_best`, and the checkpoint that holds it."""

    metric: str
    value: float
    step: int
    checkpoint: str
    eval: dict[str, float]


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """The epoch in progress (0-based)."""
    batch_in_epoch: int = 0
    """Micro batches of this epoch already trained: a resume skips them."""
    samples: int = 0
    """Real rows trained on (all processes)."""
    tokens: int = 0
    """Real (unpadded) tokens trained on."""
    padded_tokens: int = 0
    """Tokens including padding."""
    seconds: float = 0.0
    """Wall time of all invocations of this run's loop."""
    bad_evals: int = 0
    """Evaluations in a row without a new best (early stopping)."""
    best: Best | None = None
    last_eval: dict[str, Any] | None = None
    """The latest evaluation record (as metrics.jsonl has it)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("best") is not None:
            values["best"] = Best(**values["best"])
        return cls(**values)


@dataclass(frozen=True)
class Fingerprint:
    """What a checkpoint must agree with to be resumed: the resolved config, the prepared data's
    cache key, and the step batch (rows per optimizer step over all processes). The process
    count may differ: a 2 x 4 run resumes as 1 x 8."""

    config: dict[str, Any] = field(default_factory=dict)
    data_key: str = ""
    step_batch: int = 0


@dataclass
class CheckpointRecord:
    """The contents of a checkpoint's ftcli_state.json."""

    state: TrainState
    fingerprint: Fingerprint
    files: dict[str, list] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "state": self.state.to_json(),
                "fingerprint": asdict(self.fingerprint), "files": self.files}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> CheckpointRecord:
        version = data.get("version", data.get("format"))
        if version == 1:  # ftcli 0.1: the state at the top level; "global_batch" was the step batch
            old = data["fingerprint"]
            return cls(TrainState.from_json(data),
                       Fingerprint(old["config"], old["data_key"], old["global_batch"]), data.get("files", {}))
        if version != STATE_VERSION:
            raise FtcliError(f"{where}: written by another ftcli (state version {version!r}, this one reads "
                             f"1 and {STATE_VERSION}); resume it with the ftcli that wrote it, or start over with "
                             "--overwrite")
        return cls(TrainState.from_json(data["state"]), Fingerprint(**data["fingerprint"]), data["files"])
