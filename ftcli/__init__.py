"""ftcli: fine-tune Hugging Face transformers for text classification from a YAML config.

The library layer is importable and takes a Config or a path to a YAML file:

    from ftcli import load_config, train
    cfg = load_config("configs/quickstart.yaml")
    train(cfg)                                                # here
    notebook_launcher(train, (cfg,), num_processes=2)         # or on N processes

Heavy modules load on first use, so `import ftcli` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "prepare", "train", "evaluate", "predict", "sweep"]

if TYPE_CHECKING:  # pragma: no cover
    from ftcli.config import Config, load_config


def __getattr__(name: str) -> Any:
    if name in ("Config", "load_config"):
        from ftcli import config

        return getattr(config, name)
    if name == "train":
        from ftcli.training import train

        return train
    if name == "prepare":
        from ftcli.data import prepare

        return prepare
    if name == "evaluate":
        from ftcli.evaluation import evaluate_model

        return evaluate_model
    if name == "sweep":
        from ftcli.sweeps import sweep

        return sweep
    if name == "predict":
        from ftcli.evaluation import predict

        return predict
    raise AttributeError(f"module 'ftcli' has no attribute {name!r}")
