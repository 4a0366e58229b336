"""What people read: check results, JUnit XML for ``store_test_results``, ``report.md``.

A :class:`Check` is one comparison of a measured number against a threshold; every stage that
gates (test, retrain, test-deployed, deploy) reports through the same type, so a failure
always reads ``<check>: <value> <op> <threshold> (missed by <delta>)``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


@dataclass
class Check:
    """One named gate: ``value op threshold``."""

    name: str
    value: float
    op: str
    threshold: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        if isinstance(self.value, float) and math.isnan(self.value):
            return False
        return OPS[self.op](self.value, self.threshold)

    def describe(self) -> str:
        """``accuracy: 0.8123 >= 0.9 FAILED (missed by 0.0877)``."""
        verdict = "ok" if self.passed else "FAILED"
        text = f"{self.name}: {_fmt(self.value)} {self.op} {_fmt(self.threshold)} {verdict}"
        if not self.passed and self.op != "==":
            text += f" (missed by {_fmt(abs(self.value - self.threshold))})"
        return text + (f" [{self.detail}]" if self.detail else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _fmt(v: float) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def failed(checks: list[Check]) -> list[Check]:
    """The checks that did not pass."""
    return [c for c in checks if not c.passed]


def summary(checks: list[Check], limit: int = 3) -> str:
    """One line naming the failed checks with their numbers (or 'all N checks passed').

    At most ``limit`` are spelled out (the first ones: the headline metrics come first);
    the report and JUnit file list every one.
    """
    bad = failed(checks)
    if not bad:
        return f"all {len(checks)} checks passed"
    text = "; ".join(c.describe() for c in bad[:limit])
    if len(bad) > limit:
        text += f"; and {len(bad) - limit} more failed checks"
    return text


def write_junit(path: Path, suite: str, checks: list[Check], seconds: float = 0.0) -> None:
    """A JUnit XML file with one test case per check (CircleCI ``store_test_results``)."""
    bad = failed(checks)
    root = ET.Element("testsuites")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(checks)),
        failures=str(len(bad)),
        errors="0",
        time=f"{seconds:.3f}",
    )
    for c in checks:
        case = ET.SubElement(ts, "testcase", classname=suite, name=c.name, time="0")
        if not c.passed:
            f = ET.SubElement(case, "failure", message=c.describe(), type="GateFailed")
            f.text = c.describe()
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def check_table(checks: list[Check]) -> str:
    """The checks as a markdown table."""
    rows = ["| check | value | rule | result |", "|---|---|---|---|"]
    for c in checks:
        rows.append(
            f"| {c.name} | {_fmt(c.value)} | {c.op} {_fmt(c.threshold)} | "
            f"{'pass' if c.passed else '**FAIL**'} |"
        )
    return "\n".join(rows)


def metrics_table(per_class: dict[str, list[float]], labels: list[str] | None = None) -> str:
    """Per-class precision/recall/F1/support as a markdown table."""
    n = len(per_class["precision"])
    labels = labels or [str(i) for i in range(n)]
    rows = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for i in range(n):
        rows.append(
            f"| {labels[i]} | {per_class['precision'][i]:.3f} | {per_class['recall'][i]:.3f} | "
            f"{per_class['f1'][i]:.3f} | {per_class['support'][i]} |"
        )
    return "\n".join(rows)


def class_names(metrics: dict) -> list[str]:
    """How a report names each class of a classifier's metrics: the table's class names
    (``metrics["classes"]``), else ``class 0``, ``class 1``, ... (images)."""
    n = len(metrics["per_class"]["recall"])
    return list(metrics.get("classes") or [f"class {c}" for c in range(n)])
