"""The pod's load report: one encoding for the pod's trailers and the gateway's reader."""

from __future__ import annotations

import pytest

from inference.protocol.loadreport import ROW_MS, WAIT_MS, LoadReport, parse


def test_a_report_reads_back_from_its_metadata():
    report = LoadReport(wait_s=1.2345, row_s=0.25)
    back = parse([("retry-after", "1"), *report.metadata()])
    assert back == LoadReport(pytest.approx(1.2345, abs=1e-4), pytest.approx(0.25))


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (),
        [(WAIT_MS, "12")],
        [(WAIT_MS, "x"), (ROW_MS, "1")],
        [(WAIT_MS, "-1"), (ROW_MS, "1")],
        [(WAIT_MS, "nan"), (ROW_MS, "1")],
    ],
)
def test_no_report_or_a_malformed_one_reads_as_none(metadata):
    assert parse(metadata) is None
