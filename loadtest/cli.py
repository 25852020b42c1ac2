"""``tenfold loadtest ...``: open-loop load, reports and comparisons."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from loadtest.targets import LoadTestError, Target

app = typer.Typer(
    help="Open-loop load at a fixed rate, HDR latency reports, comparisons.",
    no_args_is_help=True,
)


def parse_rates(text: str) -> tuple[float, ...]:
    """``"100,200,400"`` or ``"100:1000:100"`` (start:stop:step, stop included)."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int((stop - start) / step + 1e-9) + 1
            return tuple(round(start + i * step, 6) for i in range(count))
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise LoadTestError(
            f"--rate-steps {text!r}: give rates as 100,200,400 or start:stop:step"
        ) from None


@contextmanager
def _exit_2_on_error() -> Iterator[None]:
    """A bad argument or an unusable target: its message, exit code 2."""
    try:
        yield
    except LoadTestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


class _Progress:
    """One line a second: on a terminal it rewrites itself, elsewhere it appends."""

    def __init__(self, duration_s: float):
        self.duration_s = duration_s
        self.tty = sys.stderr.isatty()

    def __call__(self, step: int, rate: float, second: int, interval) -> None:
        errors = interval.completed - interval.ok
        line = (
            f"step {step} @ {rate:g}/s  [{second + 1:>3}/{self.duration_s:g} s]  "
            f"ok {interval.ok:>6}/s  errors {errors:>4}  p50 {interval.percentile_ms(50):7.2f} ms"
            f"  p99 {interval.percentile_ms(99):8.2f} ms  max {interval.max_ms():8.2f} ms"
        )
        end = "\r" if self.tty else "\n"
        print(line.ljust(110), end=end, file=sys.stderr, flush=True)


@app.command()
def run(
    target: Annotated[str, typer.Option(help="http://HOST:PORT or grpc://HOST:PORT")],
    scenario: Annotated[str, typer.Option(help="feed | effects | mixed | infer")] = "mixed",
    rate: Annotated[float | None, typer.Option(help="requests per second")] = None,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 10.0,
    processes: Annotated[int, typer.Option(help="generator processes sharing the rate")] = 1,
    poisson: Annotated[bool, typer.Option(help="Poisson arrivals instead of constant")] = False,
    rate_steps: Annotated[
        str | None,
        typer.Option(
            help="rates to climb, e.g. 100,200,400 or 100:1000:100; stops at the "
            "first that misses --p99-ms, --max-error-rate or its rate"
        ),
    ] = None,
    p99_ms: Annotated[float | None, typer.Option(help="p99 budget in ms")] = None,
    max_error_rate: Annotated[float, typer.Option(help="error budget per step")] = 0.01,
    warmup: Annotated[float, typer.Option(help="seconds of unrecorded load first")] = 1.0,
    timeout: Annotated[float, typer.Option(help="seconds before a request is a timeout")] = 10.0,
    report: Annotated[Path | None, typer.Option(help="directory for report.json/.html")] = None,
    label: Annotated[str | None, typer.Option(help="name of this run in reports")] = None,
    model: Annotated[str, typer.Option(help="infer: the model")] = "feed_ranker",
    batch: Annotated[int, typer.Option(help="infer: rows per request")] = 1,
    size: Annotated[int, typer.Option(help="effects: output size; infer: image dims")] = 256,
    effect: Annotated[str, typer.Option(help="effects: the effect")] = "cartoon",
    count: Annotated[int, typer.Option(help="feed: items per page")] = 20,
    effects_share: Annotated[float, typer.Option(help="mixed: share of effects")] = 0.1,
    api_key: Annotated[str | None, typer.Option(help="sent as a Bearer token")] = None,
    seed: Annotated[int, typer.Option(help="seed of users, photos and arrivals")] = 0,
    max_outstanding: Annotated[
        int, typer.Option(help="per-process cap on requests in flight")
    ] = 10_000,
    allow_remote: Annotated[bool, typer.Option(help="allow a non-loopback target")] = False,
) -> None:
    """Send SCENARIO requests to TARGET at a fixed rate and report honest latency."""
    from loadtest import html, runner
    from loadtest import report as reports
    from loadtest.scenarios import ScenarioSpec

    with _exit_2_on_error():
        if (rate is None) == (rate_steps is None):
            raise LoadTestError("give one of --rate or --rate-steps")
        rates = (rate,) if rate is not None else parse_rates(rate_steps)
        headers = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        spec = ScenarioSpec(
            scenario,
            model=model,
            batch=batch,
            image_size=size,
            effect=effect,
            feed_count=count,
            effects_share=effects_share,
            seed=seed,
            headers=headers,
        )
        plan = runner.RunPlan(
            Target.parse(target, allow_remote=allow_remote),
            spec,
            rates,
            duration,
            processes=processes,
            poisson=poisson,
            warmup_s=warmup,
            timeout_s=timeout,
            max_outstanding=max_outstanding,
            p99_budget_ms=p99_ms,
            max_error_rate=max_error_rate,
        )
        steps = runner.run(plan, _Progress(duration))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    result = reports.build(plan, steps, label)
    reports.print_table(reports.steps_table(result))
    lag = max(s["start_lag_ms"]["p99"] for s in result["steps"])
    if lag > 5:
        typer.echo(
            f"warning: the generator started requests late (p99 {lag:.1f} ms); "
            "latencies include it: add --processes",
            err=True,
        )
    if len(rates) > 1:
        best = result["best_rate"]
        typer.echo(
            "no step met the budget" if best is None else f"highest rate within budget: {best:g}/s"
        )
    if report is not None:
        path = reports.write(result, report)
        page = html.render_run(result, report / "report.html")
        typer.echo(f"report: {path} and {page}")


@app.command()
def compare(
    reports_in: Annotated[list[Path], typer.Argument(help="report.json files or directories")],
    html_out: Annotated[Path | None, typer.Option("--html", help="write an HTML page")] = None,
) -> None:
    """Put two or more reports side by side (ratios against the first)."""
    from loadtest import html
    from loadtest import report as reports

    with _exit_2_on_error():
        if len(reports_in) < 2:
            raise LoadTestError("compare needs two or more reports")
        loaded = [reports.load(p) for p in reports_in]
    reports.print_table(reports.compare_table(loaded))
    if html_out is not None:
        html.render_compare(loaded, html_out)
        typer.echo(f"comparison: {html_out}")


@app.command("html")
def html_cmd(
    report_in: Annotated[Path, typer.Argument(help="a report.json or its directory")],
    out: Annotated[Path | None, typer.Option(help="page to write (default beside it)")] = None,
) -> None:
    """(Re-)draw the HTML page of a JSON report."""
    from loadtest import html
    from loadtest import report as reports

    with _exit_2_on_error():
        loaded = reports.load(report_in)
    base = report_in if report_in.is_dir() else report_in.parent
    typer.echo(html.render_run(loaded, out or base / "report.html"))
