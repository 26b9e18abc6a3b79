"""The typed ftcli config: its schema (`schema`: sections, field docs, field policy) and how it is
loaded (`loading`: YAML, `--set`, origins, error text). Cheap to import: no torch."""

from ftcli.config.loading import (as_config, config_from_dict, flatten, load_config, render_with_origins,
                                  with_values)
from ftcli.config.schema import (DATA_FORMATS, HOLDOUT_SPLIT, CalibrationConfig, Config, DataConfig, EvalConfig, ModelConfig,
                                 ParamRange, PeftConfig, Policy, SweepConfig, TrainConfig, check_path_length, json_schema,
                                 keys_with, policy_of)

__all__ = [
    "DATA_FORMATS", "HOLDOUT_SPLIT", "CalibrationConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig", "ParamRange", "PeftConfig", "Policy",
    "SweepConfig", "TrainConfig", "as_config", "check_path_length", "config_from_dict", "flatten", "json_schema",
    "keys_with", "load_config", "policy_of", "render_with_origins", "with_values",
]
