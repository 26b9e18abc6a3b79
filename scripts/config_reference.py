"""Print the config reference (Markdown) from the field docstrings in ftcli/config.py.

    python scripts/config_reference.py > /tmp/ref.md    # paste into README.md, "Config reference"

tests/test_readme.py checks that the README's reference matches this output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

from ftcli.config import Config  # noqa: E402


def _type(annotation) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "null")


def reference() -> str:
    lines = []
    for section, field in Config.model_fields.items():
        model: type[BaseModel] = field.annotation
        lines.append(f"### `{section}`: {field.description}\n")
        lines.append("| key | default | meaning |")
        lines.append("| --- | --- | --- |")
        for name, f in model.model_fields.items():
            if f.default is PydanticUndefined and f.default_factory is None:
                default = "required"
            else:
                value = f.default_factory() if f.default_factory else f.default
                default = f"`{json.dumps(value)}`"
            doc = " ".join((f.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{name}` | {default} | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference())
