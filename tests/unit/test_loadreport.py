"""The pod's load report: one encoding for the pod's trailers and the gateway's reader."""

from __future__ import annotations

import pytest

from inference.protocol.loadreport import ROW_MS, WAIT_MS, LoadReport, parse


def test_a_report_reads_back_from_its_metadata():
    report = LoadReport(wait_s=1.2345, row_s=0.25)
    back = parse([("retry-after", "1"), *report.metadata()])
    assert back == LoadReport(pytest.approx(1.2345, abs=1e-4), pytest.approx(0.25))


def test_a_small_models_pace_survives_the_encoding():
    # a row of tens of microseconds (a fresh-clone CI run's tiny model) was sent as "0.0"
    # ms and read back as no pace at all
    back = parse(LoadReport(wait_s=45e-6, row_s=23e-6).metadata())
    assert back.row_s == pytest.approx(23e-6, abs=1e-6) and back.row_s > 0
    assert back.wait_s == pytest.approx(45e-6, abs=1e-6)


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
