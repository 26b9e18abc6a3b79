"""Training: the plan (step arithmetic, the loss), the setup, the loop and the run around it
(`train`: resume, outputs, export), with the pieces they use: optimizer and clipping (`optim`),
faster CPU dropout (`fastops`), checkpoints and their state (`checkpoint`, `state`), signals and
the run folder (`run_dir`). Other packages use only the names exported here; importing this
package stays cheap (no torch)."""

from ftcli.training.checkpoint import find as find_checkpoint
from ftcli.training.run import train
from ftcli.training.run_dir import load_run_config, relaunch

__all__ = ["find_checkpoint", "load_run_config", "relaunch", "train"]
