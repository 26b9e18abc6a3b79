"""The package's shape, read from its source: no import cycles, between modules or between the
parts of the architecture (the subpackages and the flat modules), and no part reaching into
another subpackage's modules past the names its `__init__` exports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ftcli"
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """Every `ftcli` import in a module, at any depth (lazy imports count): (module, name, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "ftcli"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ftcli":
            found += [(node.module, a.name, node.lineno) for a in node.names]
    return found


def targets(module: str, name: str | None) -> str:
    """The module an import loads: `from ftcli.data import cache` loads ftcli.data.cache."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def part(module: str) -> str:
    """The architectural part a module belongs to: its subpackage, or itself when flat."""
    return ".".join(module.split(".")[:2])


def edges(of=lambda m: m) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for module, imported, _ in imports(path):
            target = targets(module, imported)
            if target == "ftcli" or of(target) == of(name) and of is part:
                continue
            graph.setdefault(of(name), set()).add(of(target))
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_scan_sees_the_package():
    assert {"ftcli.data", "ftcli.training", "ftcli.evaluation", "ftcli.config", "ftcli.sweeps"} <= set(MODULES)
    assert ("ftcli.data", "prepare") in {(m, n) for m, n, _ in imports(PACKAGE / "cli.py")}
    # the scanner finds a cycle when there is one
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_import_cycles_between_modules():
    assert cycle(edges()) is None


def test_no_import_cycles_between_the_parts_of_the_architecture():
    """Subpackages and flat modules form layers: config at the bottom, the commands on top."""
    assert cycle(edges(part)) is None


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_other_parts_use_only_what_a_subpackage_exports(subpackage):
    package = f"ftcli.{subpackage}"
    init = MODULES[package]
    exported = set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            exported = set(ast.literal_eval(node.value))
    assert exported, f"{init} lists its public names in __all__"
    reaching = []
    for name, path in MODULES.items():
        if part(name) == package:
            continue
        for module, imported, line in imports(path):
            if module.startswith(package + ".") or module == package and imported not in exported:
                reaching.append(f"{path.relative_to(PACKAGE.parent)}:{line}: from {module} import {imported}")
    assert not reaching, "\n".join(reaching)


def test_config_loads_nothing_heavy():
    """Config errors are reported before torch or transformers load: config imports only errors."""
    for name, path in MODULES.items():
        if part(name) == "ftcli.config":
            assert {targets(m, n) for m, n, _ in imports(path)} <= {"ftcli.errors"} | set(
                m for m in MODULES if part(m) == "ftcli.config")
            tree = ast.parse(path.read_text())
            top = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for a in node.names}
            top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
            assert not top & {"torch", "transformers", "datasets", "accelerate", "evaluate"}, name


def readme_layout() -> list[tuple[list[str], str]]:
    """The README's "Code layout" table: each row's parts (`data/` -> ftcli.data) and its text."""
    import re

    text = (PACKAGE.parent / "README.md").read_text()
    section = text.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("part", "---"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        rows.append(([f"ftcli.{n.removesuffix('/').removesuffix('.py')}" for n in names], cells[1]))
    return rows


def test_the_readme_code_layout_is_the_package_in_import_order():
    rows = readme_layout()
    listed = [name for names, _ in rows for name in names]
    parts = {part(m) for m in MODULES} - {"ftcli"}
    assert sorted(listed) == sorted(parts), "every part once, nothing that does not exist"
    rank = {name: i for i, (names, _) in enumerate(rows) for name in names}
    upward = [f"{a} imports {b}" for a, targets_ in edges(part).items() if a in rank
              for b in targets_ if b in rank and rank[b] <= rank[a] and b != a and not
              (rank[b] == rank[a])]
    assert not upward, f"the README lists these parts below what they import: {upward}"
    for names, text in rows:
        for name in names:
            inner = [m.rsplit(".", 1)[1] for m in MODULES if part(m) == name and m != name]
            missing = [m for m in inner if f"`{m}.py`" not in text]
            assert not missing, f"README's row for {name} does not name {missing}"
