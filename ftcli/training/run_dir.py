"""A run folder (`train.output_dir`): what ftcli owns in it, its status, its logs, the exported
model, and resuming it by its path.

    model/          the final model and tokenizer (safetensors; `from_pretrained` loads it)
    checkpoints/    resumable checkpoints, see ftcli.training.checkpoint
    config.yaml     the resolved config of the run
    run.json        status: running / interrupted / completed, and where to resume from
    metrics.jsonl   one JSON object per log step and per evaluation
    metrics.json    the final evaluation and training totals

`ftcli train --resume RUN_DIR` continues the run in RUN_DIR with the config it saved
(`RUN_DIR/config.yaml`, the resolved config), so the command ftcli prints when a run is
interrupted resumes *that* run, whatever `--set` overrides started it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ftcli.training.checkpoint import CHECKPOINTS, STATE_FILE
from ftcli.config import Config, load_config
from ftcli.errors import FtcliError
from ftcli.files import atomic_write_text, check_output_folder, replace_folder

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


class MetricsLog:
    """metrics.jsonl, appended by the main process; each line flushed as written."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines the interrupted run logged after its checkpoint."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line half-written when the run was killed (as plot.read_log skips it)
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


def write_run_json(out: Path, status: str, **extra: Any) -> None:
    """run.json: `running`, `interrupted` or `completed`, and where the run stands (main process)."""
    path = out / "run.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    current.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
    atomic_write_text(path, json.dumps(current, indent=2))


def export_model(acc, model, tokenizer, folder: Path, adapter_export: str | None = None) -> None:
    """Write the final model and tokenizer to `folder` atomically (a temporary folder renamed
    when complete). The full state dict is gathered through the Accelerator, so this also works
    when FSDP or DeepSpeed shard the weights; every process must call it. A model with adapters
    (`adapter_export`: `model.peft.export`) is written merged into a plain model, or as its
    adapters and head only; merging changes the model in place, so exporting comes last."""
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model) if adapter_export is None else None
    if state_dict is not None:  # safetensors writes host memory: an XLA (TPU) tensor must come to the CPU first
        state_dict = {k: v.detach().cpu() if hasattr(v, "cpu") else v for k, v in state_dict.items()}
    tmp = folder.with_name(f".{folder.name}.tmp")
    if acc.is_main_process:
        from ftcli import adapters
        from ftcli.quiet import quiet

        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = acc.unwrap_model(model)
        with quiet("transformers"):
            if adapter_export == "adapter":
                adapters.save_adapter(unwrapped, tmp)
            elif adapter_export == "merged":
                adapters.merged(unwrapped).save_pretrained(tmp)
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict, save_function=acc.save)
            tokenizer.save_pretrained(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes 0600 temp files; a model folder is meant to be shared
        replace_folder(tmp, folder)
    acc.wait_for_everyone()


OWN_ENTRIES = ("model", "checkpoints", "config.yaml", "run.json", "metrics.jsonl", "metrics.json",
               "learning_curves.png", "tracking", "predictions", ".model.tmp", ".model.old")
"""What ftcli writes into output_dir (and `--overwrite` removes; nothing else is touched)."""


def claim_output_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to mix two runs in one output_dir, or to write into a path that is not a folder.
    Only reads: `clear()` deletes ftcli's own entries later, for --overwrite, once every input
    check has passed."""
    if out.exists() and not out.is_dir():
        raise FtcliError(f"train.output_dir {str(out)!r} is a file, not a folder; choose another output_dir")
    check_output_folder(out, "train.output_dir")
    existing = [name for name in OWN_ENTRIES if (out / name).exists()]
    if not existing or resume:
        return
    if not overwrite:
        raise FtcliError(
            f"train.output_dir {str(out)!r} already holds a run ({', '.join(existing)}); "
            "pass --resume auto to continue it, --overwrite to replace it, or choose another output_dir"
        )


def resume_command(out: Path, processes: int) -> str:
    """The command that resumes the run in `out`: its saved config.yaml holds every --set override."""
    import shlex

    return relaunch(f"ftcli train --resume {shlex.quote(str(out))}", processes)


def relaunch(command: str, processes: int) -> str:
    """An ftcli command to print for the user to run again: under `accelerate launch` when the
    run had several processes (the launch options are the user's own, so they are not repeated)."""
    return f"accelerate launch <the same launch options> -m {command}" if processes > 1 else command


def clear(out: Path) -> None:
    """`--overwrite`: remove ftcli's own entries from `out` (main process; nothing else is touched)."""
    for name in OWN_ENTRIES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
