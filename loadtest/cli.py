"""``tenfold loadtest ...``: open-loop load, reports and comparisons, and the benchmarks
(``tenfold loadtest bench pod|gateway|peers``).

Only typer and loadtest.targets are imported here: the load machinery (and the
``loadtest`` extra it needs) is imported inside the commands, so ``tenfold --help``
stays fast and works without the extra."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from loadtest.targets import LoadTestError, Target

app = typer.Typer(
    help="Open-loop load at a fixed rate, HDR latency reports, comparisons, benchmarks.",
    no_args_is_help=True,
)
bench = typer.Typer(
    help="Benchmarks of this machine (docs/benchmarks.md): the pod against the in-process "
    "limit, what the gateway adds, tenfold against its peers.",
    no_args_is_help=True,
)
app.add_typer(bench, name="bench")

#: top-level modules of the ``loadtest`` extra (pyproject.toml)
#: the ``--repository`` option of every benchmark that starts the stack
Repository = Annotated[Path, typer.Option(help="model repository with the default models")]
DEFAULT_REPOSITORY = Path("var/model-repository")
NICE_HELP = (
    "niceness (0-19; never below this process's own) of the generator's worker processes: "
    "on a machine shared with the servers under test, they keep the CPU first (latency "
    "still counts from each request's scheduled start)"
)

LOADTEST_EXTRA = frozenset(
    {"hdrh", "tritonclient", "geventhttpclient", "locust", "matplotlib", "jinja2"}
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


@contextmanager
def _loadtest_extra() -> Iterator[None]:
    """Imports of the load machinery: without the ``loadtest`` extra, say how to get it."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in LOADTEST_EXTRA:
            raise
        typer.echo(
            f"error: no module {exc.name!r}: tenfold loadtest needs the loadtest extra "
            "(pip install 'tenfold[loadtest]')",
            err=True,
        )
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
    scenario: Annotated[
        str, typer.Option(help="feed | effects | mixed | infer | events")
    ] = "mixed",
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
    batch: Annotated[
        int, typer.Option(help="infer: rows per request; events: events per request")
    ] = 1,
    size: Annotated[int, typer.Option(help="effects: output size; infer: image dims")] = 256,
    effect: Annotated[str, typer.Option(help="effects: the effect")] = "cartoon",
    count: Annotated[int, typer.Option(help="feed: items per page")] = 20,
    history: Annotated[
        int, typer.Option(help="feed: items of recent history each new session sends")
    ] = 0,
    items: Annotated[
        int, typer.Option(help="feed: catalogue size the history is drawn from")
    ] = 100_000,
    effects_share: Annotated[float, typer.Option(help="mixed: share of effects")] = 0.1,
    api_key: Annotated[str | None, typer.Option(help="sent as a Bearer token")] = None,
    seed: Annotated[int, typer.Option(help="seed of users, photos and arrivals")] = 0,
    max_outstanding: Annotated[
        int, typer.Option(help="per-process cap on requests in flight")
    ] = 10_000,
    allow_remote: Annotated[bool, typer.Option(help="allow a non-loopback target")] = False,
    nice: Annotated[int, typer.Option(help=NICE_HELP)] = 0,
) -> None:
    """Send SCENARIO requests to TARGET at a fixed rate and report honest latency."""
    with _loadtest_extra():
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
            feed_history=history,
            items=items,
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
            nice=nice,
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
    with _loadtest_extra():
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
    with _loadtest_extra():
        from loadtest import html
        from loadtest import report as reports

    with _exit_2_on_error():
        loaded = reports.load(report_in)
    base = report_in if report_in.is_dir() else report_in.parent
    typer.echo(html.render_run(loaded, out or base / "report.html"))


def _positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise LoadTestError(f"--{name} must be positive, got {value:g}")


@bench.command("pod")
def bench_pod(
    duration: Annotated[float, typer.Option(help="seconds per cell")] = 8.0,
    threads: Annotated[
        int, typer.Option(min=1, help="ONNX Runtime intra-op threads (pod and in-process)")
    ] = 1,
    concurrency: Annotated[
        list[int], typer.Option(min=1, help="closed-loop workers; repeat for several")
    ] = (1, 16, 64),
    rows: Annotated[
        list[int],
        typer.Option(
            min=1, help="rows per request (1: one item; 64: a page of candidates); repeat"
        ),
    ] = (1, 64),
    instances: Annotated[
        list[int],
        typer.Option(min=1, help="instance_group count of the pod (ORT sessions); repeat"),
    ] = (1, 2),
    limit_duration: Annotated[
        float, typer.Option(help="seconds of the in-process limit per batch size")
    ] = 3.0,
    out: Annotated[Path | None, typer.Option(help="write JSON results here")] = None,
) -> None:
    """One pod against the same model in-process (docs/benchmarks.md).

    The ranking MLP served by one pod, closed loop at each concurrency over gRPC and
    HTTP, then run in-process by ONNX Runtime at the mean batch the pod formed."""
    with _exit_2_on_error():
        _positive(duration=duration, limit_duration=limit_duration)
        with _loadtest_extra():
            from loadtest import bench_pod as module
        module.benchmark(
            duration,
            threads,
            tuple(concurrency),
            tuple(rows),
            tuple(instances),
            out,
            limit_s=limit_duration,
        )


@bench.command("gateway")
def bench_gateway(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per measurement")] = 10.0,
    out: Annotated[Path | None, typer.Option(help="write JSON results here")] = None,
) -> None:
    """What the gateway adds, and what the whole stack serves.

    A KServe v2 call straight to the pod and through the gateway, open loop at half
    the gateway path's capacity; then the feed and the effects through the whole stack,
    closed loop."""
    with _exit_2_on_error():
        _positive(duration=duration)
        with _loadtest_extra():
            from loadtest import bench_gateway as module
        module.benchmark(repository, duration, out)


@bench.command("peers")
def bench_peers(
    repository: Repository = DEFAULT_REPOSITORY,
    triton_venv: Annotated[
        Path, typer.Option(help="venv with nvidia-pytriton (make triton-venv)")
    ] = Path(".venv-triton"),
    triton: Annotated[bool, typer.Option("--triton/--no-triton", help="include Triton")] = True,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 4.0,
    rows: Annotated[int, typer.Option(min=1, help="ranker rows per request")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the tables as .md)")
    ] = None,
) -> None:
    """tenfold against native PyTorch, Triton and the in-process limit.

    tenfold (gateway + pod, and the pod alone), a naive aiohttp + PyTorch server,
    Triton and in-process ONNX Runtime, the same open-loop load for each."""
    with _exit_2_on_error():
        _positive(duration=duration)
        with _loadtest_extra():
            from loadtest import bench_peers as module
        module.benchmark(repository, triton_venv if triton else None, duration, rows, out)


@bench.command("feed")
def bench_feed(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 5.0,
    history: Annotated[int, typer.Option(min=0, help="history items per session")] = 5,
    p99_ms: Annotated[float, typer.Option(help="p99 budget in ms")] = 100.0,
    start_rate: Annotated[float, typer.Option(help="first rate of the ladder")] = 40.0,
    workers: Annotated[int, typer.Option(min=1, help="gateway workers of the tenfold stack")] = 1,
    generator_nice: Annotated[int, typer.Option(min=0, max=19, help=NICE_HELP)] = 0,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the tables as .md)")
    ] = None,
) -> None:
    """POST /v1/feed end to end: the stack make run starts against the day-one PyTorch
    feed server (1 and 2 torch threads) and tenfold's in-process limit, with the CPU
    split and the per-stage cost before and after (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(duration=duration, p99_ms=p99_ms, start_rate=start_rate)
        with _loadtest_extra():
            from loadtest import bench_feed as module
        plan = module.FeedBenchPlan(
            repository,
            duration_s=duration,
            history=history,
            p99_budget_ms=p99_ms,
            start_rate=start_rate,
            gateway_workers=workers,
            generator_nice=generator_nice,
        )
        module.benchmark(plan, out)


@bench.command("overload")
def bench_overload(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 10.0,
    multiples: Annotated[
        str, typer.Option(help="multiples of the capacity offered, comma-separated")
    ] = "1,1.5,3",
    p99_ms: Annotated[float, typer.Option(help="p99 budget that defines capacity")] = 100.0,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the tables as .md)")
    ] = None,
) -> None:
    """POST /v1/feed over capacity: the stack make run starts with its adaptive
    concurrency limit and without it, at multiples of the measured capacity: goodput,
    shed share and latency, admitted p99, the CPU split (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(duration=duration, p99_ms=p99_ms)
        try:
            factors = tuple(float(x) for x in multiples.split(",") if x.strip())
        except ValueError:
            raise LoadTestError(f"--multiples {multiples!r}: give numbers like 1,1.5,3") from None
        if not factors or min(factors) <= 0:
            raise LoadTestError(f"--multiples {multiples!r}: give positive numbers")
        with _loadtest_extra():
            from loadtest import bench_overload as module
        plan = module.OverloadBenchPlan(
            repository, duration_s=duration, p99_budget_ms=p99_ms, multiples=factors
        )
        module.benchmark(plan, out)


@bench.command("memory")
def bench_memory(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per phase")] = 10.0,
    feed_rate: Annotated[float, typer.Option(help="feeds a second in the feed phase")] = 200.0,
    effects_rate: Annotated[
        float, typer.Option(help="effects a second in the effects phase")
    ] = 25.0,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the table as .md)")
    ] = None,
) -> None:
    """RSS of the gateway worker and the pod of the stack make run starts: at rest,
    under feed and effects load (1280x960 uploads), image bombs and slow clients
    (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(duration=duration, feed_rate=feed_rate, effects_rate=effects_rate)
        with _loadtest_extra():
            from loadtest import bench_memory as module
        plan = module.MemoryBenchPlan(
            repository, duration_s=duration, feed_rate=feed_rate, effects_rate=effects_rate
        )
        module.benchmark(plan, out)


@bench.command("events")
def bench_events(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 5.0,
    batch: Annotated[int, typer.Option(min=1, help="events per POST /v1/events")] = 20,
    p99_ms: Annotated[float, typer.Option(help="p99 budget in ms")] = 100.0,
    prefill: Annotated[int, typer.Option(min=1000, help="events for the processor run")] = 50_000,
    lag_samples: Annotated[int, typer.Option(min=10, help="events timed for the lag")] = 200,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the table as .md)")
    ] = None,
) -> None:
    """Feedback events: ingestion through the gateway, the stream processor's rate, the
    lag from 202 to the user's state, and the feed with and without the state read
    (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(duration=duration, p99_ms=p99_ms)
        with _loadtest_extra():
            from loadtest import bench_events as module
        plan = module.EventsBenchPlan(
            repository,
            duration_s=duration,
            batch=batch,
            p99_budget_ms=p99_ms,
            prefill=prefill,
            lag_samples=lag_samples,
        )
        module.benchmark(plan, out)


@bench.command("effects")
def bench_effects(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 5.0,
    p99_ms: Annotated[float, typer.Option(help="p99 budget in ms")] = 500.0,
    start_rate: Annotated[float, typer.Option(help="first rate of the ladder")] = 5.0,
    upload: Annotated[int, typer.Option(help="long side of the JPEG uploads")] = 640,
    generator_nice: Annotated[int, typer.Option(min=0, max=19, help=NICE_HELP)] = 0,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the tables as .md)")
    ] = None,
) -> None:
    """POST /v1/effects/cartoon end to end at 256 and 512: the stack make run starts
    against the day-one PyTorch effects server (1 and 2 torch threads), with the CPU
    split and the per-stage cost before and after (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(duration=duration, p99_ms=p99_ms, start_rate=start_rate, upload=upload)
        with _loadtest_extra():
            from loadtest import bench_effects as module
        plan = module.EffectsBenchPlan(
            repository,
            duration_s=duration,
            p99_budget_ms=p99_ms,
            start_rate=start_rate,
            upload=upload,
            generator_nice=generator_nice,
        )
        module.benchmark(plan, out)


@bench.command("pod-surge")
def bench_pod_surge(
    repository: Repository = DEFAULT_REPOSITORY,
    cpu: Annotated[float, typer.Option(help="CPU cores of the pod's quota")] = 0.15,
    base: Annotated[float, typer.Option(help="requests/s before the surge")] = 2.3,
    surge: Annotated[float, typer.Option(help="the surge's factor over the base")] = 10.0,
    base_s: Annotated[float, typer.Option(help="seconds of base load")] = 20.0,
    surge_s: Annotated[float, typer.Option(help="seconds of surge")] = 6.0,
    runs: Annotated[int, typer.Option(min=1, help="pods started, one surge each")] = 5,
    out: Annotated[Path | None, typer.Option(help="write JSON results here")] = None,
) -> None:
    """One effects pod under its CPU quota (as the autoscaler starts it) meets a 10x
    surge alone: answered in time, refused at once, or let run past the 5 s deadline
    (a 504 in the drill); root, for the cgroup (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(cpu=cpu, base=base, surge=surge, base_s=base_s, surge_s=surge_s)
        from loadtest import bench_podsurge as module

        plan = module.PodSurgePlan(
            repository, cpu, base, surge, base_s=base_s, surge_s=surge_s, runs=runs
        )
        module.benchmark(plan, out)


@bench.command("mesh")
def bench_mesh(
    repository: Repository = DEFAULT_REPOSITORY,
    duration: Annotated[float, typer.Option(help="seconds per rate")] = 4.0,
    rows: Annotated[int, typer.Option(min=1, help="ranker rows per request")] = 100,
    changes: Annotated[int, typer.Option(min=1, help="endpoint changes to time")] = 20,
    out: Annotated[
        Path | None, typer.Option(help="write JSON results here (and the tables as .md)")
    ] = None,
) -> None:
    """The mesh: Envoy's overhead on /v1/feed, KServe v2 through Envoy straight to the
    pod against the pod alone and the gateway hop, and the time from an endpoint change
    to the first request served there (docs/benchmarks.md)."""
    with _exit_2_on_error():
        _positive(duration=duration)
        with _loadtest_extra():
            from loadtest import bench_mesh as module
        plan = module.MeshBenchPlan(repository, duration_s=duration, rows=rows, changes=changes)
        module.benchmark(plan, out)
