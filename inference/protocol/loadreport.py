"""A pod's load report, sent with every inference answer (gRPC trailing metadata), in
the spirit of Envoy's ORCA: how long one more row would wait in the model's queue
(``tenfold-wait-ms``) and the pod's pace per row (``tenfold-row-ms``). The gateway keeps
the last report of each endpoint and does not send a request to a pod that would
refuse it: under a small CPU quota receiving and refusing an image costs a pod the
CPU its model needed. One encoding, shared by the pod and the gateway."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

WAIT_MS = "tenfold-wait-ms"
ROW_MS = "tenfold-row-ms"


@dataclass(frozen=True, slots=True)
class LoadReport:
    #: seconds one more row would take to be served, from the report's time
    wait_s: float
    #: seconds per row the pod keeps (each row more waits this much longer)
    row_s: float

    def metadata(self) -> tuple[tuple[str, str], ...]:
        # microsecond resolution: a small model's row costs tens of microseconds, which
        # a tenth of a millisecond would send as 0
        return ((WAIT_MS, f"{self.wait_s * 1000:.3f}"), (ROW_MS, f"{self.row_s * 1000:.3f}"))


def parse(metadata: Iterable[tuple[str, str | bytes]] | None) -> LoadReport | None:
    """The report in ``metadata``; None when it has none (an older pod, another server)
    or a malformed one."""
    if not metadata:
        return None
    values = {k: v for k, v in metadata if k in (WAIT_MS, ROW_MS)}
    try:
        wait, row = float(values[WAIT_MS]), float(values[ROW_MS])
    except (KeyError, ValueError, TypeError):
        return None
    if not (wait >= 0 and row >= 0):  # also refuses nan
        return None
    return LoadReport(wait / 1000, row / 1000)
