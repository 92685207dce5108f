"""Scoring and grading of an audit (audit/report.py)."""

from __future__ import annotations

from guardproxy.audit.checks import BY_ID, CHECKS, Finding, Status
from guardproxy.audit.report import GRADES, Report, Row, at_least, grade, score


def rows(**statuses: Status) -> list[Row]:
    return [Row(BY_ID[check.replace("__", ".")], Finding(check, status, "e")) for check, status in statuses.items()]


def test_score_weights_pass_warn_and_fail_and_ignores_the_unobservable() -> None:
    # weights: cors.preflight 2, compression 1, headers.banners 1, rate_limit 2
    result = rows(
        cors__preflight=Status.PASS,
        compression=Status.WARN,
        headers__banners=Status.FAIL,
        rate_limit=Status.NOT_OBSERVABLE,
    )
    assert score(result) == round(100 * (2 + 0.5) / 4)


def test_nothing_observed_scores_zero_and_grades_f() -> None:
    result = rows(rate_limit=Status.NOT_OBSERVABLE)
    assert score(result) == 0
    assert grade(result) == "F"


def test_all_pass_is_a_plus() -> None:
    assert grade([Row(check, Finding(check.id, Status.PASS, "")) for check in CHECKS]) == "A+"


def test_any_failure_keeps_a_plus_away() -> None:
    result = [Row(check, Finding(check.id, Status.PASS, "")) for check in CHECKS]
    result[-1] = Row(BY_ID["compression"], Finding("compression", Status.FAIL, ""))
    assert score(result) >= 97
    assert grade(result) == "A"


def test_a_critical_failure_caps_the_grade_at_c() -> None:
    result = [Row(check, Finding(check.id, Status.PASS, "")) for check in CHECKS]
    result[0] = Row(BY_ID["cors.foreign_origin"], Finding("cors.foreign_origin", Status.FAIL, ""))
    assert score(result) >= 90
    assert grade(result) == "C"


def test_grade_thresholds() -> None:
    two = [BY_ID["rate_limit"], BY_ID["cors.preflight"]]  # weight 2 each, nothing critical
    assert (
        grade([Row(two[0], Finding("rate_limit", Status.PASS, "")), Row(two[1], Finding("x", Status.WARN, ""))]) == "C"
    )
    assert (
        grade([Row(two[0], Finding("rate_limit", Status.FAIL, "")), Row(two[1], Finding("x", Status.WARN, ""))]) == "F"
    )
    assert (
        grade([Row(two[0], Finding("rate_limit", Status.PASS, "")), Row(two[1], Finding("x", Status.FAIL, ""))]) == "D"
    )


def test_at_least() -> None:
    assert at_least("A+", "B")
    assert at_least("B", "B")
    assert not at_least("C", "B")
    assert all(at_least(letter, "F") for letter in GRADES)


def test_build_orders_rows_as_the_catalogue_and_keeps_the_first_verdict() -> None:
    report = Report.build(
        "http://x/",
        [
            Finding("compression", Status.PASS, "first"),
            Finding("cors.foreign_origin", Status.FAIL, "cors"),
            Finding("compression", Status.FAIL, "second"),
        ],
        duration=1.0,
        requests=3,
    )
    assert [row.check.id for row in report.rows] == ["cors.foreign_origin", "compression"]
    assert report.rows[1].finding.evidence == "first"
    assert report.count(Status.FAIL) == 1
