"""The module map (lines per module) and the 15 longest functions of the package, for a
restructuring's before-and-after. Usage: python scripts/code_map.py [PACKAGE_DIR]"""

import ast
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "ftcli")
mods, funcs = [], []
for p in sorted(root.rglob("*.py")):
    text = p.read_text()
    mods.append((str(p), len(text.splitlines())))
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.append((node.end_lineno - node.lineno + 1, f"{p}:{node.name}"))
for m, n in mods:
    print(f"{n:5d} {m}")
print(f"{sum(n for _, n in mods):5d} total in {len(mods)} modules\n")
for n, f in sorted(funcs, reverse=True)[:15]:
    print(f"{n:5d} {f}")
