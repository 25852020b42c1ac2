"""Memory: the resident size (RSS) of the gateway worker and the pod in the stack
``make run`` starts, at rest, under the benchmark loads and under hostile probes.

    make bench-memory   # = tenfold loadtest bench memory \\
                        #       --repository var/model-repository \\
                        #       --out docs/results/bench_memory.json

Phases, one after another on one stack (RSS sampled every 100 ms, per process):

1. **idle**: a few seconds after ready.
2. **feed**: the feed scenario of ``tenfold loadtest`` (5-item history), open loop.
3. **effects**: ``POST /v1/effects/cartoon?size=256`` with 1280x960 JPEG uploads.
4. **image bomb**: 12 clients at a time post a 700-byte JPEG that declares 5000x5000
   (25 Mpx), back to back.
5. **slow clients**: many connections each send headers promising a 1 MB upload, then
   a few bytes a second, for the whole phase.
6. **after**: at rest again (what the load left behind).

The goals (issue 19): the gateway worker <= 150 MB and a pod <= its models + 200 MB.
"Models" is the size on disk of the model files the pod serves (the highest version
of each model in the repository), the memory the weights alone need.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from PIL import Image

from loadtest.bench_feed import (
    feed_items,
    make_run_stack,
    measure_rate,
    process_tree,
    role_of,
)
from loadtest.bench_peers import publish, setup
from loadtest.scenarios import ScenarioSpec

MB = 1 << 20
GOALS = {"gateway": 150.0}  # MB; the pod's goal is its models + POD_HEADROOM_MB
POD_HEADROOM_MB = 200.0
ROLES = ("gateway", "pod")


@dataclass(frozen=True)
class MemoryBenchPlan:
    repository: Path
    duration_s: float = 10.0
    feed_rate: float = 200.0
    effects_rate: float = 25.0
    upload: int = 1280
    bomb_clients: int = 12
    slow_clients: int = 300
    idle_s: float = 3.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Sampler(threading.Thread):
    """The largest RSS of each role's processes (gateway worker, pod) every 100 ms,
    kept per named phase."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.phase = "idle"
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            now: dict[str, float] = {}
            for proc in process_tree(self.pids):
                role = role_of(proc)
                if role not in ROLES:
                    continue
                try:
                    rss = proc.memory_info().rss / MB
                except psutil.Error:
                    continue
                now[role] = max(now.get(role, 0.0), rss)
            kept = self.samples.setdefault(self.phase, {})
            for role, rss in now.items():
                kept.setdefault(role, []).append(rss)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict = {}
        for phase, roles in self.samples.items():
            out[phase] = {
                role: {"end_mb": round(v[-1], 1), "peak_mb": round(max(v), 1)}
                for role, v in roles.items()
                if v
            }
        return out


def bomb_jpeg() -> bytes:
    """About 700 bytes of a JPEG whose header declares 5000x5000 pixels."""
    out = io.BytesIO()
    Image.new("RGB", (5000, 5000), (200, 10, 10)).save(out, format="JPEG", quality=10)
    return out.getvalue()[:700]


async def _bombs(address: str, clients: int, seconds: float) -> dict[int, int]:
    import aiohttp

    body, statuses = bomb_jpeg(), {}
    url = f"http://{address}/v1/effects/cartoon?size=256"
    end = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            headers = {"Content-Type": "image/jpeg"}
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                statuses[answer.status] = statuses.get(answer.status, 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return statuses


async def _slow_clients(address: str, clients: int, seconds: float) -> dict[str, int]:
    """``clients`` connections each promise a 1 MB upload and send 16 bytes a second;
    how each one ended (answered with a status, or closed without an answer)."""
    host, port = address.rsplit(":", 1)
    ended: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/effects/cartoon?size=256 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: 1048576\r\n\r\n"
        )
        outcome = "open at the end"
        try:
            while time.monotonic() < end:
                writer.write(b"\xff" * 16)
                await writer.drain()
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    continue
                outcome = line.decode(errors="replace").split(" ")[1] if line else "closed"
                break
        except OSError:
            outcome = "closed"
        finally:
            writer.close()
        ended[outcome] = ended.get(outcome, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return ended


def models_mb(repo: Path) -> float:
    """Size on disk of the highest version of every model in ``repo``."""
    total = 0
    for model in (d for d in repo.iterdir() if d.is_dir()):
        versions = [d for d in model.iterdir() if d.is_dir() and d.name.isdigit()]
        if versions:
            top = max(versions, key=lambda d: int(d.name))
            total += sum(f.stat().st_size for f in top.rglob("*") if f.is_file())
    return round(total / MB, 1)


def measure(plan: MemoryBenchPlan) -> dict:
    repo = plan.repository.resolve()
    feed = ScenarioSpec("feed", feed_history=5, items=feed_items(repo))
    effects = ScenarioSpec("effects", image_size=256, photo_sizes=(plan.upload,))
    probes: dict = {}
    with make_run_stack(repo, 1) as (address, pids):
        sampler = Sampler(pids)
        sampler.start()
        try:
            time.sleep(plan.idle_s)
            sampler.phase = "feed"
            _say(f"feed at {plan.feed_rate:g}/s for {plan.duration_s:g} s")
            probes["feed"] = measure_rate(address, pids, feed, plan.feed_rate, plan.duration_s)
            sampler.phase = "effects"
            _say(f"effects ({plan.upload}px uploads) at {plan.effects_rate:g}/s")
            probes["effects"] = measure_rate(
                address, pids, effects, plan.effects_rate, plan.duration_s
            )
            sampler.phase = "image bomb"
            _say(f"image bombs: {plan.bomb_clients} clients for {plan.duration_s:g} s")
            probes["image bomb"] = asyncio.run(_bombs(address, plan.bomb_clients, plan.duration_s))
            sampler.phase = "slow clients"
            _say(f"slow clients: {plan.slow_clients} for {plan.duration_s:g} s")
            probes["slow clients"] = asyncio.run(
                _slow_clients(address, plan.slow_clients, plan.duration_s)
            )
            sampler.phase = "after"
            time.sleep(plan.idle_s)
        finally:
            sampler.stopping.set()
            sampler.join()
    return {"models_mb": models_mb(repo), "rss": sampler.summary(), "probes": probes}


def _probe(name: str, probe) -> str:
    if name in ("feed", "effects"):
        return f"{probe['achieved']:g}/s, p99 {probe['p99_ms']:g} ms, errors {probe['errors'] or 0}"
    return ", ".join(f"{k}: {v}" for k, v in sorted(probe.items(), key=str))


def table(results: dict) -> str:
    models = results["models_mb"]
    pod_goal = models + POD_HEADROOM_MB
    lines = [
        f"Goals: gateway worker <= {GOALS['gateway']:g} MB; pod <= models ({models:g} MB "
        f"on disk) + {POD_HEADROOM_MB:g} = {pod_goal:g} MB.",
        "",
        "| phase | gateway end / peak MB | pod end / peak MB | what the phase got |",
        "|---|---|---|---|",
    ]
    for phase, roles in results["rss"].items():
        cells = []
        for role in ROLES:
            r = roles.get(role)
            cells.append("-" if r is None else f"{r['end_mb']:g} / {r['peak_mb']:g}")
        probe = results["probes"].get(phase)
        got = "-" if probe is None else _probe(phase, probe)
        lines.append(f"| {phase} | {cells[0]} | {cells[1]} | {got} |")
    peaks = {
        role: max((r[role]["peak_mb"] for r in results["rss"].values() if role in r), default=0)
        for role in ROLES
    }
    verdict = {
        "gateway": peaks["gateway"] <= GOALS["gateway"],
        "pod": peaks["pod"] <= pod_goal,
    }
    lines += [
        "",
        f"- gateway worker peak {peaks['gateway']:g} MB: "
        f"{'met' if verdict['gateway'] else 'NOT met'} (<= {GOALS['gateway']:g})",
        f"- pod peak {peaks['pod']:g} MB: "
        f"{'met' if verdict['pod'] else 'NOT met'} (<= {pod_goal:g})",
    ]
    return "\n".join(lines)


def benchmark(plan: MemoryBenchPlan, out: Path | None = None) -> dict:
    feed_items(plan.repository)  # refuses a repository without feed models, up front
    started = time.time()
    results = measure(plan)
    results["setup"] = setup(
        started,
        duration_s_per_phase=plan.duration_s,
        feed_rate=plan.feed_rate,
        effects_rate=plan.effects_rate,
        upload_px=plan.upload,
        bomb_clients=plan.bomb_clients,
        slow_clients=plan.slow_clients,
    )
    publish(results, table(results), out)
    return results
