"""Where a model or tokenizer comes from: a folder inside an installed Python package
(`package:<pkg>/<folder>`), a local folder, or a Hugging Face Hub id.

One resolution, one set of error messages, for the data cache (which hashes the tokenizer's
files), for loading the tokenizer (here) and the model (ftcli.modeling). No heavy imports at
module level.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftcli.config import ModelConfig
from ftcli.errors import FtcliError, first_line
from ftcli.quiet import quiet

PACKAGE_PREFIX = "package:"

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "chat_template.jinja",
)
"""Files that decide how text is tokenized (hashed into the cache key)."""


def resolve_package_path(name: str) -> str:
    """Turn `package:<pkg>/<folder>` into the folder inside the installed package; other names
    (Hub ids, local folders) are returned unchanged. The package is located without importing it."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    spec_text = name[len(PACKAGE_PREFIX):].strip("/")
    package, _, sub = spec_text.partition("/")
    import importlib.util

    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FtcliError(
            f"model {name!r}: Python package {package!r} is not installed; "
            f"install it (pip install {package.replace('_', '-')}) or point name_or_path at a model folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise FtcliError(f"model {name!r}: package {package!r} has no folder {sub!r} ({folder})")
    return str(folder)


def looks_like_path(name: str) -> bool:
    """A name meant as a folder (`./m`, `/abs`, `~/m`, `a/b/c`), never a Hub id (`org/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def locate(name: str, field: str) -> str:
    """A local folder (as a path string) or a Hub id. A path-looking name that does not exist,
    or a file where a folder is expected, is an error naming `field`."""
    resolved = resolve_package_path(name)
    local = Path(resolved).expanduser()
    if local.exists():
        if not local.is_dir():
            raise FtcliError(f"{field}: {resolved!r} is a file; give the model's folder")
        return str(local)
    if looks_like_path(resolved):
        raise FtcliError(f"{field}: folder {resolved!r} does not exist; fix the path or give a Hub model id")
    return resolved


def tokenizer_field(model: ModelConfig) -> str:
    return "model.tokenizer" if model.tokenizer else "model.name_or_path"


def tokenizer_folder(model: ModelConfig) -> Path:
    """A local folder holding the tokenizer's files (downloaded from the Hub when needed)."""
    source = locate(model.tokenizer_name, tokenizer_field(model))
    return Path(source) if Path(source).is_dir() else hub_tokenizer_snapshot(source, model.revision)


def hub_tokenizer_snapshot(repo_id: str, revision: str | None) -> Path:
    """Download (or find in the local Hub cache) the tokenizer files of a Hub model. A seam: tests
    patch it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=list(TOKENIZER_FILES) + ["config.json"])
        )
    except Exception as exc:  # noqa: BLE001 - any Hub failure is reported the same way
        raise FtcliError(
            f"model {repo_id!r}: cannot fetch its tokenizer from the Hugging Face Hub "
            f"({type(exc).__name__}); check the id and your network, or point model.name_or_path at a local folder"
        ) from None


def model_config_json(model: ModelConfig) -> dict:
    """The model's own `config.json` as a dict, read as a file (a cache hit imports no
    transformers): from the local folder, or fetched from the Hub. {} when it cannot be read;
    loading the model then reports the problem."""
    import json

    source = locate(model.name_or_path, "model.name_or_path")
    folder = Path(source)
    path = folder / "config.json" if folder.is_dir() else hub_model_config(source, model.revision)
    try:
        return json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}


def hub_model_config(repo_id: str, revision: str | None) -> Path | None:
    """The `config.json` of a Hub model (downloaded, or from the local Hub cache); None when it
    cannot be had. A seam: tests patch it."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception:  # noqa: BLE001 - offline or unknown: the model load says what is wrong
        return None


POSITION_OFFSET_FAMILIES = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer", "xmod",
                            "roberta-prelayernorm", "luke", "mpnet", "ibert")
"""Families whose position ids start after the padding id (fairseq's convention): of
`max_position_embeddings` (514 in RoBERTa), `pad_token_id + 1` are never used for tokens."""


def position_limit(config: dict) -> int | None:
    """The longest input the model's position embeddings allow, from its config.json; None when
    it has no fixed limit (relative positions, as in T5)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        limit = config.get(key)
        if isinstance(limit, int) and limit > 0:
            if config.get("model_type") in POSITION_OFFSET_FAMILIES:
                limit -= int(config.get("pad_token_id") or 0) + 1
            return limit
    return None


def load_tokenizer(model: ModelConfig):
    """The model's fast tokenizer (`model.tokenizer_name`, else the model's own), from wherever
    `locate` finds it."""
    from transformers import AutoTokenizer

    field = tokenizer_field(model)
    source = locate(model.tokenizer_name, field)
    try:
        with quiet("transformers"):
            tok = AutoTokenizer.from_pretrained(
                source, revision=model.revision, trust_remote_code=model.trust_remote_code, use_fast=True
            )
    except (OSError, ValueError) as exc:
        raise FtcliError(f"{field}: cannot load a tokenizer from {source!r} ({first_line(exc)})") from None
    if not getattr(tok, "is_fast", False):
        raise FtcliError(f"{field}: {source!r} has no fast tokenizer (tokenizer.json); ftcli needs one")
    return tok
