"""Loading a config: YAML, `--set` overrides, where each value came from, and error text.

One `Config` is built here and passed down typed; nothing downstream re-reads YAML or edits a
config's dict. A command that needs a variant (predict's one-file config, a sweep trial's
values) builds it with `with_values`, validated like any other. Every problem found is reported
at once, each naming the file and line (or the `--set` option) and how to fix it.

Relative paths in a config (data files, output_dir, cache_dir) are relative to the directory
the command runs in, as for any command-line tool.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from ftcli.config.schema import Config
from ftcli.errors import FtcliError, shorten



def as_config(config: Config | str | Path) -> Config:
    """A Config as given, or loaded from a YAML path (what the library functions accept)."""
    return config if isinstance(config, Config) else load_config(config)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `dotted.key=value` overrides, validate; raise FtcliError listing
    every problem found."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FtcliError(f"{label}: config file not found; check the --config path") from None
    except IsADirectoryError:
        raise FtcliError(f"{label}: is a directory, not a config file; pass a .yaml file to --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FtcliError(f"{label}: cannot read config file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
        _refuse_duplicate_keys(yaml.compose(text), label)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FtcliError(f"{label}{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise FtcliError(f"{label}: the config must be a mapping of sections (model, data, train, eval)")
    return config_from_dict(raw, overrides, source=label, yaml_text=text)


def _refuse_duplicate_keys(root, label: str) -> None:
    """A key given twice in one mapping: YAML loaders keep the last silently (`epochs: 1`, later
    `epochs: 30`), so the file would not mean what its first line says."""
    problems = []

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for knode, vnode in node.value:
                key, line = str(knode.value), knode.start_mark.line + 1
                dotted = f"{prefix}.{key}" if prefix else key
                if key in seen and key != "<<":
                    problems.append(f"{label}:{line}: {dotted[:200]} is given twice (lines {seen[key]} and {line}); "
                                    "keep one")
                seen.setdefault(key, line)
                walk(vnode, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, prefix)

    walk(root, "")
    if problems:
        raise FtcliError("\n".join(problems))


def config_from_dict(
    raw: dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    source: str = "<config>",
    yaml_text: str | None = None,
) -> Config:
    """Validate a config given as a dict (what the YAML holds), with overrides applied."""
    data = _deep_copy(raw)
    file_keys = set(flatten(data))
    set_keys: set[str] = set()
    problems = []
    for item in overrides:
        try:
            key, value = _parse_override(item)
            _apply_override(data, key, value)
            set_keys.add(key)
        except ValueError as exc:
            problems.append(f"--set {item}: {exc}")
    if problems:
        raise FtcliError("\n".join(problems))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(yaml_text) if yaml_text else {}
        # A cross-field check may find several problems: one message line each.
        errors = [{**err, "msg": line} for err in _one_per_union(exc.errors()) for line in err["msg"].splitlines()]
        msgs = [_format_error(err, source, lines, set_keys) for err in errors]
        raise FtcliError("\n".join(dict.fromkeys(msgs))) from None
    cfg._source_path = source
    origins = {}
    for key in flatten(cfg.to_dict()):
        if key in set_keys or any(key.startswith(k + ".") for k in set_keys):
            origins[key] = "--set"
        elif key in file_keys or any(key.startswith(k + ".") for k in file_keys):
            origins[key] = "file"
    cfg._origins = origins
    return cfg


def with_values(cfg: Config, values: dict[str, Any], *, origin: str = "--set") -> Config:
    """`cfg` with settings replaced by dotted key (`{"train.output_dir": "runs/t3"}`; a mapping
    such as `data.files` is replaced whole), validated like a loaded config: a bad value raises
    FtcliError naming the key. The result keeps `cfg`'s source and origins; the keys given here
    get `origin`."""
    data = cfg.to_dict()
    for key, value in values.items():
        try:
            _apply_override(data, key, _deep_copy(value))
        except ValueError as exc:
            raise FtcliError(f"{key}: {exc}") from None
    new = config_from_dict(data, source=cfg.source_path or "<config>")

    def given(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in values)

    new._origins = {k: v for k, v in cfg._origins.items() if not given(k)}
    new._origins.update({k: origin for k in flatten(new.to_dict()) if given(k)})
    return new



def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a config's `to_dict()`) as {dotted.key: leaf value}; an empty mapping is
    a leaf of its own. The one flattener: config origins, checkpoint compatibility and trackers
    all name settings by these keys."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj} if prefix else {}


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError("expected dotted.key=value, e.g. --set train.epochs=1")
    key, _, text = item.partition("=")
    key = key.strip()
    if not _KEY_RE.match(key):
        raise ValueError(f"{key!r} is not a dotted key such as train.learning_rate")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: take it as the plain string the user typed
    return key, value


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _line_index(yaml_text: str) -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML text, for error messages."""
    try:
        root = yaml.compose(yaml_text)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                key = f"{prefix}.{knode.value}" if prefix else str(knode.value)
                out[key] = knode.start_mark.line + 1
                walk(vnode, key)

    walk(root, "")
    return out


def _field_at(loc: tuple) -> tuple[int, Any]:
    """How many leading parts of an error's `loc` name config fields, and the last one's type."""
    import typing

    model: Any = Config
    annotation = None
    for depth, part in enumerate(loc):
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return depth, annotation
        annotation = field.annotation
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        model = inner[0] if len(inner) == 1 and _is_union(annotation) else annotation
    return len(loc), annotation


def _is_union(annotation: Any) -> bool:
    import types
    import typing

    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _one_per_union(errors: list[dict]) -> list[dict]:
    """pydantic reports a value that fits no branch of a union field once per branch, under the
    branch's internal name (`class_weights.literal['auto']`, `class_weights.list[float].0`): fold
    those into one error on the field that says what it accepts."""
    out, seen = [], set()
    for err in errors:
        depth, annotation = _field_at(tuple(err["loc"]))
        branches = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        # Optional[X] is not reported per branch: only unions of two or more types are
        if depth == len(err["loc"]) or not _is_union(annotation) or len(branches) < 2 or err["type"] == "value_error":
            out.append(err)
            continue
        loc = tuple(err["loc"][:depth])
        if loc in seen:
            continue
        seen.add(loc)
        value = err.get("input")
        for other in errors:  # the branch errors of a list report its items: quote the whole value
            if tuple(other["loc"][:depth]) == loc and len(other["loc"]) == depth + 1:
                value = other.get("input", value)
        out.append({"type": "union", "loc": loc, "msg": f"give {_accepts(annotation)}", "input": value})
    return out


def _accepts(annotation: Any) -> str:
    """What a field's type accepts, in words: `auto, a list of numbers, or null`."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(annotation):
        parts = [_accepts(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", or " + parts[-1]
    if origin is Literal:
        return " or ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_accepts(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(annotation, "a value")


def _section_fields(loc: tuple) -> list[str]:
    """Valid keys at the place `loc` points to (for 'did you mean' suggestions)."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model else []


def _format_error(err: dict, source: str, lines: dict[str, int], set_keys: set[str]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        # Cross-field checks raise on their section with a message that starts with the field
        # ("labels: ..."): point at that field.
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_-]+)*", head):
            loc, msg = loc + tuple(head.split(".")), rest
    dotted = ".".join(loc)
    if dotted in set_keys:
        prefix = f"--set {dotted}"
    else:
        line = next((lines[k] for k in (dotted, ".".join(loc[:-1])) if k in lines), None)
        prefix = f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"
    prefix = prefix.rstrip(": ")
    if kind == "extra_forbidden":
        valid = _section_fields(loc)
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
        return f"{prefix}: unknown key ({hint})"
    if kind == "missing":
        return f"{prefix}: required field is missing"
    if kind == "value_error":
        return f"{prefix}: {msg}"
    got = err.get("input")
    if kind == "string_type" and isinstance(got, bool):
        return f"{prefix}: {msg} (got {got!r}: YAML reads yes/no/on/off/true/false as booleans; quote it)"
    return f"{prefix}: {msg} (got {shorten(got)})"


def render_with_origins(cfg: Config) -> str:
    """The resolved config as YAML, each value followed by where it came from."""
    lines = []
    for section, values in cfg.to_dict().items():
        if values is None:  # an optional section left out (sweep)
            lines.append(f"{section}: null{'':<{max(0, 48 - len(section))}} # {cfg.origin(section)}")
            continue
        lines.append(f"{section}:")
        width = max(len(k) for k in values) + 2
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            if text.endswith("\n...") or text.endswith("..."):
                text = text.rsplit("\n", 1)[0].strip()
            lines.append(f"  {key + ':':<{width}} {text:<40} # {cfg.origin(f'{section}.{key}')}")
    return "\n".join(lines) + "\n"
