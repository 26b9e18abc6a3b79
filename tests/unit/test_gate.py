"""The quality gate (`ftcli eval --require`): the README's own example, every operator, metric
names with digits and underscores, and names checked against what the evaluation reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftcli import gate
from ftcli.cli import app
from ftcli.errors import FtcliError

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("text, expected", [
    ("f1>=0.85", ("f1", ">=", 0.85)),
    ("f1_macro > 0.5", ("f1_macro", ">", 0.5)),
    ("spearmanr<=1", ("spearmanr", "<=", 1.0)),
    ("loss<0.7", ("loss", "<", 0.7)),
    ("matthews_correlation==0", ("matthews_correlation", "==", 0.0)),
    (" accuracy >= 1e-1 ", ("accuracy", ">=", 0.1)),
])
def test_parse(text, expected):
    r = gate.parse(text)
    assert (r.metric, r.op, r.threshold) == expected


@pytest.mark.parametrize("text", ["f1 ~ 0.5", "f1>=", ">=0.5", "f1>=high", "1f>=0.5", "f1=>0.5"])
def test_parse_rejects(text):
    with pytest.raises(FtcliError, match=re.escape(f"--require {text!r}")):
        gate.parse(text)


def test_operators_and_failures():
    result = {"f1": 0.85, "loss": 0.5}
    assert gate.failures([gate.parse("f1>=0.85"), gate.parse("loss<=0.5"), gate.parse("f1==0.85")], result) == []
    failed = gate.failures([gate.parse("f1>0.85"), gate.parse("loss<0.5")], result)
    assert failed == ["f1 0.8500 (required > 0.85)", "loss 0.5000 (required < 0.5)"]


def test_unknown_metric_lists_the_available_ones():
    with pytest.raises(FtcliError) as err:
        gate.check_names([gate.parse("f1_macro>=0.5"), gate.parse("f1>=0.5")], ["loss", "accuracy", "f1"])
    assert str(err.value) == "--require f1_macro>=0.5: no metric 'f1_macro' (available: loss, accuracy, f1)"


def _readme_requirements() -> list[str]:
    return re.findall(r"--require '([^']+)'", README)


def test_the_readme_examples_parse():
    examples = _readme_requirements()
    assert "f1>=0.85" in examples
    for text in examples:
        gate.parse(text)


def test_eval_gates_on_f1_with_the_readme_example(make_config, tiny_classifier):
    runner = CliRunner()
    cfg = make_config()
    base = ["eval", "-c", str(cfg), "--model", str(tiny_classifier), "--json"]
    measured = json.loads(runner.invoke(app, base).stdout)
    passing = runner.invoke(app, [*base, "--require", f"f1>={measured['f1']}", "--require", "accuracy>0"])
    assert passing.exit_code == 0, passing.stderr
    assert json.loads(passing.stdout)["failed"] == []
    failing = runner.invoke(app, [*base, "--require", f"f1>{measured['f1']}"])
    assert failing.exit_code == 3
    assert f"quality gate failed: f1 {measured['f1']:.4f} (required > {measured['f1']:g})" in failing.stderr
    readme = runner.invoke(app, [*base, "--require", "f1>=0.85"])  # as the README writes it
    assert readme.exit_code == (0 if measured["f1"] >= 0.85 else 3), readme.stderr
    unknown = runner.invoke(app, [*base, "--require", "f1_macro>=0.5"])
    assert unknown.exit_code == 2
    assert "error: --require f1_macro>=0.5: no metric 'f1_macro' (available: loss, accuracy, f1)" in unknown.stderr
