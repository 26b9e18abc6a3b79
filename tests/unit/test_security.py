"""Security rules: safe YAML, no pickle loading, weights as safetensors, remote code opt-in.

The source scan reads every call in the package (an AST, not a regex over the text) and proves on
a sample that it finds what it forbids; what checkpoints hold is checked by loading them
(tests/integration/test_resume.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ftcli"


def unsafe_calls(source: str) -> list[str]:
    """Calls that would load pickles, unsafe YAML or run remote code, or write pickled weights."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        keywords = {k.arg: k.value for k in node.keywords}

        def is_literal(key, value):
            return isinstance(keywords.get(key), ast.Constant) and keywords[key].value is value

        if owner == "yaml" and name not in ("safe_load", "safe_dump", "compose"):
            found.append(f"yaml.{name}")
        if owner in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
            found.append(f"{owner}.{name}")
        if owner == "torch" and name == "load" and not is_literal("weights_only", True):
            found.append("torch.load without weights_only=True")
        if is_literal("trust_remote_code", True):
            found.append(f"{name}(trust_remote_code=True)")
        if name in ("save_pretrained", "save_state", "save_model") and is_literal("safe_serialization", False):
            found.append(f"{name}(safe_serialization=False)")
        if name == "from_pretrained" and is_literal("use_safetensors", False):
            found.append("from_pretrained(use_safetensors=False)")
    return found


def test_the_scan_finds_what_it_forbids():
    sample = """
import pickle, torch, yaml
yaml.load(text)
pickle.loads(blob)
torch.load(path)
torch.load(path, weights_only=False)
model.save_pretrained(folder, safe_serialization=False)
AutoModel.from_pretrained(name, trust_remote_code=True)
torch.load(path, weights_only=True)
yaml.safe_load(text)
"""
    assert unsafe_calls(sample) == [
        "yaml.load", "pickle.loads", "torch.load without weights_only=True", "torch.load without weights_only=True",
        "save_pretrained(safe_serialization=False)", "from_pretrained(trust_remote_code=True)"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unsafe_loading_or_saving_in_the_package(path):
    assert unsafe_calls(path.read_text()) == []


def test_remote_code_runs_only_when_the_config_asks(tiny_model, monkeypatch):
    """The loaders pass `trust_remote_code` from the config, False unless it says true."""
    import transformers

    from ftcli import modeling
    from ftcli.config import ModelConfig
    from ftcli.data import load_tokenizer

    seen = []
    real_tokenizer = transformers.AutoTokenizer.from_pretrained
    real_model = transformers.AutoModelForSequenceClassification.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: seen.append(("tokenizer", k["trust_remote_code"])) or real_tokenizer(*a, **k))
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained",
                        lambda *a, **k: seen.append(("model", k["trust_remote_code"])) or real_model(*a, **k))
    for trust in (False, True):
        model = ModelConfig(name_or_path=str(tiny_model), labels=["no", "yes"], trust_remote_code=trust)
        load_tokenizer(model)
        modeling.load_model(model, ["no", "yes"])
    assert ModelConfig(name_or_path="x").trust_remote_code is False
    assert seen == [("tokenizer", False), ("model", False), ("tokenizer", True), ("model", True)]
