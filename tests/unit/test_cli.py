"""The command line through Typer's CliRunner (in process) and as a subprocess where import cost
or process exit codes are the point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, run_cli
from ftcli.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("prepare", "train", "eval", "config"):
        assert command in result.output


def test_help_and_config_errors_do_not_import_heavy_libraries(tmp_path):
    """`ftcli --help` and a config error must answer before torch & co. would even load."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x}\ndata: {path: glue}\ntrain: {epochs: 0}\n")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ftcli.cli import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "assert r.invoke(app, ['train', '--help']).exit_code == 0\n"
        f"assert r.invoke(app, ['train', '-c', {str(bad)!r}]).exit_code == 2\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'evaluate', 'accelerate') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_config_error_is_one_line_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x}\ndata: {path: glue}\ntrain: {epochs: 0}\n")
    result = run_cli("train", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}:3: train.epochs: Input should be greater than or equal to 1 (got 0)\n"
    assert result.stdout == ""


def test_config_show_resolves_defaults_and_overrides(make_config):
    cfg = make_config()
    result = invoke("config", "show", "-c", cfg, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)  # YAML with a comment per value saying where it came from
    assert shown["train"]["epochs"] == 2 and shown["train"]["seed"] == 42
    lines = {line.split(":")[0].strip(): line for line in result.output.splitlines()}
    assert lines["epochs"].endswith("# --set") and lines["seed"].endswith("# default")
    assert lines["max_length"].endswith("# file") and lines["files"].endswith("# file")
    as_json = json.loads(invoke("config", "show", "-c", cfg, "--json").output)
    assert as_json["config"]["data"]["max_length"] == 48
    assert as_json["origins"]["data.max_length"] == "file" and as_json["origins"]["train.seed"] == "default"


def test_config_schema_describes_every_field(tmp_path):
    out = tmp_path / "schema.json"
    result = invoke("config", "schema", "--output", out)
    assert result.exit_code == 0
    schema = json.loads(out.read_text())
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert train["batch_size"]["minimum"] == 1 and "per process" in train["batch_size"]["description"]
    assert schema["$defs"]["TrainConfig"]["additionalProperties"] is False
    import jsonschema

    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    jsonschema.validate(cfg, schema)
    cfg["train"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, schema)


def test_prepare_reports_miss_then_hit(make_config):
    cfg = make_config()
    first = invoke("prepare", "-c", cfg)
    assert first.exit_code == 0, first.output
    assert "tokenized (first build)" in first.output and "train" in first.output
    second = invoke("prepare", "-c", cfg, "--json")
    assert json.loads(second.stdout)["cache"] == "hit"
    third = json.loads(invoke("prepare", "-c", cfg, "--json", "--set", "data.max_length=16").stdout)
    assert third["cache"] == "built" and third["why"] == "changed: max_length"
    assert third["splits"]["train"]["max_tokens"] == 16


def test_eval_without_a_trained_model(make_config, tmp_path):
    result = invoke("eval", "-c", make_config())
    assert result.exit_code == 2
    assert f"error: model folder '{tmp_path / 'run'}' does not exist; train first" in result.output


def test_bad_data_exits_2_naming_the_row(make_config, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n{"sentence1": "a", "sentence2": "b", "label": 5}\n')
    cfg = make_config(data={"files": {"train": str(rows)}})
    result = invoke("prepare", "-c", cfg)
    assert result.exit_code == 2
    assert f"error: {rows}: row 2: label 5 is not a label id 0..1" in result.output


def test_unexpected_errors_exit_1_and_debug_shows_the_traceback(make_config, monkeypatch):
    import ftcli.data

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ftcli.data, "prepare", boom)
    result = invoke("prepare", "-c", make_config())
    assert result.exit_code == 1
    assert "error: unexpected RuntimeError: disk on fire (rerun with --debug for the traceback)" in result.output
    debug = invoke("--debug", "prepare", "-c", make_config())
    assert isinstance(debug.exception, RuntimeError)


def test_module_entry_point():
    result = run_cli("--help")
    assert result.returncode == 0 and "prepare" in result.stdout


def test_the_api_functions_stay_functions_once_their_modules_are_imported():
    """`ftcli.sweep` is the function even after the module that defines it is imported (a module
    named like the function would replace the package attribute: a second call would fail)."""
    import importlib
    import pkgutil

    import ftcli

    for module in pkgutil.walk_packages(ftcli.__path__, "ftcli."):  # every module and subpackage, imported
        if not module.name.endswith(("__main__", "glue_metric")):
            importlib.import_module(module.name)
    for name in ("prepare", "train", "evaluate", "predict", "sweep"):
        fn = getattr(ftcli, name)
        importlib.import_module(fn.__module__)
        assert getattr(ftcli, name) is fn, name
