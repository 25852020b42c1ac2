"""Run the timing-sensitive tests many times in a row while another process keeps one
CPU core busy: the check that they do not depend on wall-clock luck (docs/testing.md).

    python -m tests.stress --runs 20            # the tests marked `timing`
    python -m tests.stress --runs 5 -- tests/loadtest/test_generator.py

Exit 0 only if every run passed. Progress is shown per run; the summary prints the
pass count and the slowest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

HOG = "while True: pass"

app = typer.Typer(add_completion=False)


def start_hog(core: int) -> subprocess.Popen:
    """A busy loop pinned to ``core``: the 'other CPU-heavy process' of a shared machine."""
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        os.sched_setaffinity(hog.pid, {core})
    except OSError:  # fewer cores than asked for: the hog still competes
        pass
    return hog


@app.command()
def main(
    runs: Annotated[int, typer.Option(min=1, help="how many times in a row")] = 20,
    hog_core: Annotated[int, typer.Option(help="the core the busy loop is pinned to")] = 0,
    pytest_args: Annotated[
        list[str] | None, typer.Argument(help="passed to pytest (default: -m timing)")
    ] = None,
) -> None:
    console = Console(stderr=True)
    args = pytest_args or ["-m", "timing"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *args]
    hog = start_hog(hog_core)
    failures: list[tuple[int, str]] = []
    times: list[float] = []
    try:
        with Progress(console=console) as bar:
            task = bar.add_task(f"{runs} runs, core {hog_core} busy", total=runs)
            for i in range(1, runs + 1):
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if done.returncode != 0:
                    failures.append((i, done.stdout[-3000:]))
                bar.update(task, advance=1, description=f"run {i}: {len(failures)} failed")
    finally:
        hog.kill()
        hog.wait()
    for i, tail in failures:
        console.print(f"[red]run {i} failed[/red]\n{tail}")
    console.print(
        f"{runs - len(failures)}/{runs} runs passed ({' '.join(cmd[3:])}), "
        f"slowest {max(times):.1f} s, one core kept busy"
    )
    raise typer.Exit(1 if failures else 0)


if __name__ == "__main__":
    app()
