"""Installing and running ftcli as the README says: pinned versions, no install warnings, the help
text, what git ignores."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from typer.testing import CliRunner

from ftcli.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_setup_installs_the_tested_versions():
    """The README's figures come from these versions; setup.sh installs with them pinned."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "-c \"$constraints\"" in setup and "constraints.txt" in setup
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for package in ("transformers", "datasets", "evaluate", "accelerate", "tokenizers", "typer", "rich",
                    "pydantic", "safetensors", "numpy", "pyarrow", "huggingface_hub"):
        assert re.fullmatch(r"\d+(\.\d+)+", pins.get(package, "")), package
    assert "torch" not in pins  # pinned on its own, before anything else (CPU build)


def test_pyproject_keeps_open_ranges_and_an_spdx_license():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # a table here makes setuptools warn at install
    assert all("==" not in dep for dep in project["dependencies"])


def test_set_option_help_is_readable():
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "KEY=VALUE" in out and "list[str]" not in out and "<list" not in out


def test_generated_outputs_are_ignored():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert {"runs/", ".ftcli_cache/", "ci-results/", ".venv/"} <= set(ignored)


def test_quality_gate_script_finds_the_venv_in_a_fresh_shell(tmp_path):
    """A fresh shell has no activated venv: the gate script uses this repository's .venv."""
    import os
    import subprocess

    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "ftcli").exists() or venv_bin.parent != REPO / ".venv":
        import pytest

        pytest.skip("needs this repository's .venv (scripts/setup.sh)")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env["PATH"] = "/usr/bin:/bin"
    out = subprocess.run(["bash", str(REPO / "scripts" / "ci_quality_gate.sh"), str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr  # ftcli ran and refused the missing config: not 127
    assert "missing.yaml: config file not found" in out.stderr
