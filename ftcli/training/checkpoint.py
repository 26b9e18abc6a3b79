"""Checkpoints: atomic save, verified resume, rotation.

A checkpoint is `output_dir/checkpoints/step-0000123/`: what `accelerator.save_state` writes
(model as safetensors, optimizer, scheduler, every process's RNG states, grad scaler) plus
`ftcli_state.json` (a `CheckpointRecord`, ftcli.training.state: where the loop stands, the best metric so
far, the run's fingerprint, and a size + sha256 for every file). Every process writes its part into
`.tmp-step-0000123/`; the main process then checksums it, writes `ftcli_state.json` last and
renames the folder into place. A folder named `step-*` with a state file is therefore complete;
anything else is an interrupted write, never used and cleaned up later.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from ftcli.config import flatten, policy_of
from ftcli.errors import FtcliError, disk_full_error, is_disk_full
from ftcli.files import checksums, fsync_dir, verify_checksums
from ftcli.training.state import CheckpointRecord, Fingerprint, TrainState

STATE_FILE = "ftcli_state.json"
CHECKPOINTS = "checkpoints"

def root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def name_for(step: int) -> str:
    return f"step-{step:07d}"


def fault_point(name: str, step: int, process_index: int) -> None:
    """Fault injection for the kill-and-resume tests: FTCLI_FAULT=<name>:<step>[@<process>]
    kills this process with SIGKILL at that point, as a crash or `kill -9` would."""
    spec = os.environ.get("FTCLI_FAULT")
    if not spec:
        return
    where, _, who = spec.partition("@")
    if where == f"{name}:{step}" and (not who or int(who) == process_index):
        os.kill(os.getpid(), signal.SIGKILL)


def save(accelerator, output_dir: Path, state: TrainState, fingerprint: Fingerprint) -> Path:
    """Write checkpoint `step` atomically. Every process must call it (save_state is collective
    under FSDP/DeepSpeed, and each process writes its own RNG state)."""
    step = state.step
    base = root(output_dir)
    tmp = base / f".tmp-{name_for(step)}"
    final = base / name_for(step)
    if accelerator.is_main_process:
        base.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        fault_point("checkpoint-write", step, accelerator.process_index)
        if accelerator.is_main_process:
            record = CheckpointRecord(state, fingerprint, checksums(tmp))
            with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
                json.dump(record.to_json(), f, indent=2)
                f.flush()
                os.fsync(f.fileno())
    except Exception as exc:
        full = is_disk_full(exc) or _nearly_full(base)  # torch's writer only says "file write failed"
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint must not keep the disk full
        if full:
            error = disk_full_error(f"the checkpoints in {base}", instead="set train.checkpoint_every: null (or a larger "
                                    "interval), or a train.output_dir on another disk")
            error.main_process = accelerator.is_main_process
            raise error from None
        raise
    if accelerator.is_main_process:
        if final.exists():  # re-saving a step after a resume: replace the old copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(base)
    accelerator.wait_for_everyone()
    return final


def _nearly_full(folder: Path) -> bool:
    """Under 64 MiB free where a checkpoint was being written (checked before its partial files
    are removed): too little for any model's checkpoint."""
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def read_state(ckpt: Path) -> CheckpointRecord:
    try:
        data = json.loads((ckpt / STATE_FILE).read_text())
        return CheckpointRecord.from_json(data, f"checkpoint {ckpt}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FtcliError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable ({exc}); pick another checkpoint") from None


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint is complete and intact; else what is wrong with it."""
    if not (ckpt / STATE_FILE).is_file():
        return f"no {STATE_FILE} (an interrupted write)"
    try:
        files = json.loads((ckpt / STATE_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"{STATE_FILE} is unreadable"
    return verify_checksums(ckpt, files)


def complete(output_dir: Path) -> list[Path]:
    """Checkpoint folders that finished writing, oldest first (not yet verified)."""
    base = root(output_dir)
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find(output_dir: Path, spec: str, log) -> Path | None:
    """The checkpoint to resume from. `auto`: the newest intact one (a damaged one is reported and
    skipped); None when there is none. A path: that checkpoint, which must be intact."""
    if spec != "auto":
        ckpt = Path(spec)
        if not ckpt.is_dir():
            raise FtcliError(f"--resume {spec}: no such checkpoint folder; use --resume auto or a "
                             f"folder under {root(output_dir)}")
        problem = verify(ckpt)
        if problem:
            raise FtcliError(f"--resume {spec}: checkpoint is not usable: {problem}; use --resume auto "
                             "to take the newest intact one")
        return ckpt
    for ckpt in reversed(complete(output_dir)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        log(f"warning: checkpoint {ckpt} is damaged ({problem}); trying the previous one")
    return None


def check_compatible(saved: Fingerprint, current: Fingerprint, ckpt: Path) -> None:
    """Refuse to resume a run whose training-relevant settings or data differ, naming them.
    Settings newer than the checkpoint (absent from its config) are taken as agreeing; those whose
    policy says they may change on resume (logging, cadence, paths: ftcli.config.schema) are not
    compared."""
    diffs = []
    old_cfg, new_cfg = flatten(saved.config), flatten(current.config)
    for key in sorted(old_cfg):
        if policy_of(key).may_change_on_resume:
            continue
        if old_cfg[key] != new_cfg.get(key):
            diffs.append(f"{key} ({old_cfg[key]!r} -> {new_cfg.get(key)!r})")
    if saved.data_key != current.data_key:
        diffs.append(f"the prepared data (cache key {saved.data_key} -> {current.data_key})")
    if saved.step_batch != current.step_batch:
        diffs.append(f"the global batch ({saved.step_batch} -> {current.step_batch}; "
                     "batch_size x processes x gradient_accumulation_steps)")
    if diffs:
        raise FtcliError(f"checkpoint {ckpt} was written by a different run: " + "; ".join(diffs)
                         + ". Resume with the same settings, or pass --allow-changes to resume anyway")


def rotate(output_dir: Path, keep: int | None, protect: set[str]) -> list[Path]:
    """Keep the newest `keep` complete checkpoints plus those in `protect` (the best); delete the
    others and leftovers of interrupted writes. Main process only."""
    base = root(output_dir)
    removed = []
    if base.is_dir():
        for leftover in base.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    if keep is None:
        return removed
    ckpts = complete(output_dir)
    for ckpt in ckpts[: max(0, len(ckpts) - keep)]:  # all but the newest `keep`
        if ckpt.name not in protect:
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    return removed
