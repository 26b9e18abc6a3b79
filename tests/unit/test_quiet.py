"""`quiet`: libraries are silenced inside the block and the caller's settings come back after."""

from __future__ import annotations

import logging
import warnings

import pytest

from ftcli.quiet import quiet


def test_quiet_silences_inside_and_restores_the_callers_settings():
    import datasets
    import optuna
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as tf_logging

    tf_logging.set_verbosity_info()
    ds_logging.set_verbosity_info()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    datasets.enable_progress_bars()
    try:
        with quiet("transformers", "datasets", "optuna", "warnings"):
            assert tf_logging.get_verbosity() == logging.ERROR and not tf_logging.is_progress_bar_enabled()
            assert ds_logging.get_verbosity() == logging.CRITICAL and not datasets.is_progress_bar_enabled()
            assert optuna.logging.get_verbosity() == optuna.logging.WARNING
            with warnings.catch_warnings(record=True) as seen:
                warnings.warn("hidden")  # the filter quiet() set is in force: nothing is recorded
            assert not seen
        assert tf_logging.get_verbosity() == logging.INFO and tf_logging.is_progress_bar_enabled()
        assert ds_logging.get_verbosity() == logging.INFO and datasets.is_progress_bar_enabled()
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        tf_logging.set_verbosity_warning()
        ds_logging.set_verbosity_warning()
        optuna.logging.set_verbosity(optuna.logging.INFO)


def test_quiet_restores_after_an_error_and_refuses_unknown_names():
    from transformers.utils import logging as tf_logging

    before = tf_logging.get_verbosity()
    with pytest.raises(RuntimeError):
        with quiet("transformers"):
            raise RuntimeError("boom")
    assert tf_logging.get_verbosity() == before
    with pytest.raises(ValueError, match="no library 'torch'"):
        with quiet("torch"):
            pass
