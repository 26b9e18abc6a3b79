"""Silencing a library's own log lines and progress bars while ftcli reports progress itself.

One helper for every library ftcli quiets; the caller's settings are restored on exit, so a
Python caller's logging is as it was (the side-effects test checks it).
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet(*libraries: str):
    """Within the block, `transformers`, `datasets` and `optuna` log only errors (optuna:
    warnings, which include a failed trial's reason) and show no progress bars; `torch.onnx` and
    `onnxruntime` (the root logger its quantizer writes to) log only errors; `warnings`
    ignores Python warnings (optuna marks its heartbeats and matplotlib some plots experimental).
    Examples: transformers' 'newly initialized: classifier.*' (the expected state of a fresh
    head) and `datasets` logging a full traceback for a file ftcli reports in one line."""
    with contextlib.ExitStack() as stack:
        for library in libraries:
            if library == "transformers":
                from transformers.utils import logging

                level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
                stack.callback(lambda level=level, bars=bars: (
                    logging.set_verbosity(level), logging.enable_progress_bar() if bars else None))
                logging.set_verbosity_error()
                logging.disable_progress_bar()  # "Loading weights 100%|...": noise in logs, instant anyway
            elif library == "datasets":
                import datasets
                from datasets.utils import logging as ds_logging

                level, bars = ds_logging.get_verbosity(), datasets.is_progress_bar_enabled()
                stack.callback(lambda level=level, bars=bars: (
                    ds_logging.set_verbosity(level),
                    (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()))
                ds_logging.set_verbosity(ds_logging.CRITICAL)
                datasets.disable_progress_bars()
            elif library == "optuna":
                import optuna

                stack.callback(optuna.logging.set_verbosity, optuna.logging.get_verbosity())
                optuna.logging.set_verbosity(optuna.logging.WARNING)
            elif library in ("torch.onnx", "onnxruntime"):
                import logging as std_logging  # `logging` is transformers' above, in a callback

                # torch's exporter logs each optional op set it skips (torchvision); ONNX Runtime's
                # quantizer calls `logging.warning()` on the root logger, which would give a root
                # logger without handlers one for good (basicConfig): a null handler meanwhile.
                logger = std_logging.getLogger(library if library == "torch.onnx" else None)
                stack.callback(logger.setLevel, logger.level)
                logger.setLevel(std_logging.ERROR)
                if library == "onnxruntime":
                    null = std_logging.NullHandler()
                    logger.addHandler(null)
                    stack.callback(logger.removeHandler, null)
            elif library == "warnings":
                import warnings

                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
            else:
                raise ValueError(f"quiet: no library {library!r}")
        yield
