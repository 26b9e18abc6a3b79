"""Checkpoints: atomic save, verified resume, rotation.

A checkpoint is `output_dir/checkpoints/step-0000123/`: what `accelerator.save_state` writes
(model as safetensors, optimizer, scheduler, every process's RNG states, grad scaler) plus
`ftcli_state.json` (where the loop stands, the best metric so far, the fingerprints of config and
data, and a size + sha256 for every file). Every process writes its part into
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
from typing import Any

from ftcli.data import sha256_file
from ftcli.errors import FtcliError

STATE_FILE = "ftcli_state.json"
CHECKPOINTS = "checkpoints"
FORMAT = 1

# Training-relevant settings: a checkpoint resumes only a run whose values agree (or with
# --allow-changes). Everything else (logging, checkpoint cadence, output paths) may change.
RESUME_INSENSITIVE = {
    "data.cache_dir", "data.num_proc",
    "train.output_dir", "train.log_every", "train.checkpoint_every", "train.save_total_limit",
    "train.distributed_timeout_s", "train.eval_batch_size", "train.report_to", "train.final_model",
    "train.early_stopping_patience", "train.batch_size", "eval.split", "eval.metric",
    "train.dataloader_workers", "train.compile", "train.cpu_heap_reuse",
}


def root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def name_for(step: int) -> str:
    return f"step-{step:07d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fault_point(name: str, step: int, process_index: int) -> None:
    """Fault injection for the kill-and-resume tests: FTCLI_FAULT=<name>:<step>[@<process>]
    kills this process with SIGKILL at that point, as a crash or `kill -9` would."""
    spec = os.environ.get("FTCLI_FAULT")
    if not spec:
        return
    where, _, who = spec.partition("@")
    if where == f"{name}:{step}" and (not who or int(who) == process_index):
        os.kill(os.getpid(), signal.SIGKILL)


def save(accelerator, output_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically. Every process must call it (save_state is collective
    under FSDP/DeepSpeed, and each process writes its own RNG state)."""
    base = root(output_dir)
    tmp = base / f".tmp-{name_for(step)}"
    final = base / name_for(step)
    if accelerator.is_main_process:
        base.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    fault_point("checkpoint-write", step, accelerator.process_index)
    if accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): [p.stat().st_size, sha256_file(p)]
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        payload = {"format": FORMAT, **state, "files": files}
        state_path = tmp / STATE_FILE
        with open(state_path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # re-saving a step after a resume: replace the old copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(base)
    accelerator.wait_for_everyone()
    return final


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise FtcliError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable ({exc}); pick another checkpoint") from None


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint is complete and intact; else what is wrong with it."""
    if not (ckpt / STATE_FILE).is_file():
        return f"no {STATE_FILE} (an interrupted write)"
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
        files = state["files"]
    except (OSError, ValueError, KeyError):
        return f"{STATE_FILE} is unreadable"
    for rel, (size, digest) in files.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} is truncated or altered (size {path.stat().st_size}, expected {size})"
        if sha256_file(path) != digest:
            return f"{rel} does not match its checksum"
    return None


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


def check_compatible(saved: dict[str, Any], current: dict[str, Any], ckpt: Path) -> None:
    """Refuse to resume a run whose training-relevant settings or data differ, naming them."""
    diffs = []
    old_cfg, new_cfg = _flat(saved["config"]), _flat(current["config"])
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if key in RESUME_INSENSITIVE:
            continue
        if old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key} ({old_cfg.get(key)!r} -> {new_cfg.get(key)!r})")
    if saved["data_key"] != current["data_key"]:
        diffs.append(f"the prepared data (cache key {saved['data_key']} -> {current['data_key']})")
    if saved["global_batch"] != current["global_batch"]:
        diffs.append(f"the global batch ({saved['global_batch']} -> {current['global_batch']}; "
                     "batch_size x processes x gradient_accumulation_steps)")
    if diffs:
        raise FtcliError(f"checkpoint {ckpt} was written by a different run: " + "; ".join(diffs)
                         + ". Resume with the same settings, or pass --allow-changes to resume anyway")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: obj}


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
