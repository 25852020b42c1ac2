"""Rate ladders: the highest rate a server keeps within its budget.

``climb`` runs one server's ladder; ``climb_together`` runs several servers' ladders in
turns, rung by rung, so that a machine whose speed drifts during a run (this one's did,
by up to 2x within minutes) shifts every server's figures alike instead of only the
one measured last. Both are pure: ``measure(rate)`` does the work and returns a row
with at least ``rate`` and ``meets``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping

Row = dict
Measure = Callable[[float], Row]


def climber(rates: Iterable[float], refine: int = 0) -> Generator[float, Row, dict]:
    """Yield the rates to measure and receive their rows: along ``rates`` until the
    first row that does not meet its budget, then ``refine`` rates spaced geometrically
    between the best rate kept and the one missed (stopping at the first miss again),
    so the figure is good to one step / (``refine`` + 1) instead of one step. Returns
    ``{"best": row or None, "ladder": rows in the order measured}``."""
    steps, best, missed = [], None, None
    for rate in rates:
        row = yield rate
        steps.append(row)
        if not row["meets"]:
            missed = rate
            break
        best = row
    if best is not None and missed is not None and refine > 0:
        low = best["rate"]
        for k in range(1, refine + 1):
            row = yield round(low * (missed / low) ** (k / (refine + 1)), 1)
            steps.append(row)
            if not row["meets"]:
                break
            best = row
    return {"best": best, "ladder": steps}


def climb(rates: Iterable[float], measure: Measure, refine: int = 0) -> dict:
    """One server's ladder (``climber``), measured with ``measure``."""
    return climb_together(rates, {"": measure}, refine)[""]


def climb_together(
    rates: Iterable[float], measures: Mapping[str, Measure], refine: int = 0
) -> dict[str, dict]:
    """Every server's ladder, in rounds: each round measures the next rate of every
    server still climbing, in an order rotated by one each round (no server always
    goes first). A server that is done (missed, refined) drops out; the others go on.
    The result per label is ``climber``'s."""
    rates = tuple(rates)
    climbers = {label: climber(rates, refine) for label in measures}
    results: dict[str, dict] = {}
    pending: dict[str, float] = {}
    for label, steps in climbers.items():
        try:
            pending[label] = next(steps)
        except StopIteration as done:  # no rates at all
            results[label] = done.value
    turn = 0
    while pending:
        labels = list(pending)
        shift = turn % len(labels)
        for label in labels[shift:] + labels[:shift]:
            row = measures[label](pending[label])
            try:
                pending[label] = climbers[label].send(row)
            except StopIteration as done:
                results[label] = done.value
                del pending[label]
        turn += 1
    return {label: results[label] for label in measures}
