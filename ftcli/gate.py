"""The quality gate of `ftcli eval --require 'f1>=0.85'`: parse requirements, check them.

Pure Python and cheap to import: a malformed requirement is reported before any model loads,
and a metric name is checked against the metrics the evaluation will report before it runs.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from ftcli.errors import FtcliError

OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}

# Metric names as evaluation reports them: f1, f1_macro, spearmanr, matthews_correlation, ...
_REQUIREMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|>|<)\s*(\S+)\s*")


@dataclass(frozen=True)
class Requirement:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


def parse(text: str) -> Requirement:
    """`'f1>=0.85'` -> Requirement('f1', '>=', 0.85); FtcliError naming the mistake otherwise."""
    match = _REQUIREMENT.fullmatch(text)
    if not match:
        raise FtcliError(f"--require {text!r}: write METRIC OP VALUE with OP one of "
                         f"{', '.join(OPERATORS)}, e.g. 'f1>=0.85' or 'loss<0.5'")
    name, op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise FtcliError(f"--require {text!r}: {number!r} is not a number") from None
    if not math.isfinite(threshold):  # 'f1>=nan' never passes, 'f1<=inf' always does
        raise FtcliError(f"--require {text!r}: the bound must be a finite number, not {number}")
    return Requirement(name, op, threshold)


def check_names(requirements: list[Requirement], available: list[str]) -> None:
    """Every requirement names a metric the evaluation reports; the error lists the names."""
    unknown = [r for r in requirements if r.metric not in available]
    if unknown:
        raise FtcliError("\n".join(f"--require {r}: no metric {r.metric!r} (available: {', '.join(available)})"
                                   for r in unknown))


def _shown(r: Requirement, result: dict[str, float]) -> str:
    return f"{r.metric} {result[r.metric]:.4f} (required {r.op} {r.threshold:g})"


def failures(requirements: list[Requirement], result: dict[str, float]) -> list[str]:
    """Human-readable lines for the requirements `result` misses (empty: the gate passes)."""
    return [_shown(r, result) for r in requirements if not r.holds(float(result[r.metric]))]


def checks(requirements: list[Requirement], result: dict[str, float]) -> list[dict]:
    """Each requirement with the value measured and its verdict, for `eval --json` (a CI job
    prints what was gated from these, not a metric of its own choosing)."""
    return [{"requirement": str(r), "metric": r.metric, "op": r.op, "bound": r.threshold,
             "value": float(result[r.metric]), "passed": r.holds(float(result[r.metric]))} for r in requirements]


def verdict(requirements: list[Requirement], result: dict[str, float]) -> str:
    """One line: passed or failed, with every gated metric, its value and its bound."""
    missed = failures(requirements, result)
    met = [_shown(r, result) for r in requirements if r.holds(float(result[r.metric]))]
    if missed:
        return "quality gate failed: " + "; ".join(missed) + (f" (met: {'; '.join(met)})" if met else "")
    return "quality gate passed: " + "; ".join(met)
