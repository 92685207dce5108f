"""A report: one row per check, a score and a grade.

Scoring: each observed check earns its weight for a pass, half of it for a warning, nothing for
a failure; "not observable" rows count neither way. The score is the share earned, 0-100. The
grade follows the score (A+ 97 and no failure, A 90, B 80, C 65, D 50, else F), and a failed
weight-3 check — a hole someone can use today (CORS reflection, a reflected Host, a stack
trace) — caps it at C whatever the score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from guardproxy.audit.checks import CHECKS, Check, Finding, Status

GRADES = ("A+", "A", "B", "C", "D", "F")
_THRESHOLDS = ((97, "A+"), (90, "A"), (80, "B"), (65, "C"), (50, "D"))
_CREDIT = {Status.PASS: 1.0, Status.WARN: 0.5, Status.FAIL: 0.0}
CRITICAL_WEIGHT = 3


@dataclass(frozen=True)
class Row:
    check: Check
    finding: Finding

    @property
    def status(self) -> Status:
        return self.finding.status


@dataclass(frozen=True)
class Report:
    url: str
    rows: tuple[Row, ...]
    duration: float  # seconds the audit took
    requests: int  # requests it sent

    @classmethod
    def build(cls, url: str, findings: Iterable[Finding], *, duration: float, requests: int) -> Report:
        """Rows in catalogue order, one per check (a check judged twice keeps its first verdict)."""
        by_check: dict[str, Finding] = {}
        for finding in findings:
            by_check.setdefault(finding.check, finding)
        rows = tuple(Row(check, by_check[check.id]) for check in CHECKS if check.id in by_check)
        return cls(url, rows, duration, requests)

    @property
    def score(self) -> int:
        return score(self.rows)

    @property
    def grade(self) -> str:
        return grade(self.rows)

    def count(self, status: Status) -> int:
        return sum(1 for row in self.rows if row.status is status)


def score(rows: Iterable[Row]) -> int:
    earned = possible = 0.0
    for row in rows:
        if row.status is Status.NOT_OBSERVABLE:
            continue
        possible += row.check.weight
        earned += row.check.weight * _CREDIT[row.status]
    return round(100 * earned / possible) if possible else 0


def grade(rows: Iterable[Row]) -> str:
    rows = list(rows)
    if not any(row.status is not Status.NOT_OBSERVABLE for row in rows):
        return "F"  # nothing observed proves nothing
    points = score(rows)
    letter = next((letter for threshold, letter in _THRESHOLDS if points >= threshold), "F")
    failures = [row for row in rows if row.status is Status.FAIL]
    if letter == "A+" and failures:
        letter = "A"
    if any(row.check.weight >= CRITICAL_WEIGHT for row in failures) and GRADES.index(letter) < GRADES.index("C"):
        letter = "C"
    return letter


def at_least(letter: str, threshold: str) -> bool:
    """Whether grade `letter` is as good as `threshold` or better."""
    return GRADES.index(letter) <= GRADES.index(threshold)
