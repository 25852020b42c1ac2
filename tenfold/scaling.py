"""The local stack's autoscaled pools: one pool per product (feed, effects), so a surge
of one product scales only its pods and each pod loads only its pool's models; per
pool a local provider (pod processes, optionally under CPU quotas) and an autoscaler
reading the gateway's arrivals for the pool's routes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autoscale.autoscaler import Autoscaler
from autoscale.cgroups import CpuLimiter
from autoscale.local import LocalProvider, ProviderStatus
from autoscale.policy import Decision, PolicySettings
from autoscale.sources import ScrapeSource
from gateway.launch import DEFAULT_MODELS
from inference.launch import POD_PRELOAD
from mesh.launch import put_endpoints
from servicekit.launcher import LaunchError, spawn
from servicekit.zygote import ForkServer

EFFECTS_MODELS = ("effects_cartoon",)
#: pool -> the models its pods load
PRODUCT_POOLS: Mapping[str, tuple[str, ...]] = {
    "feed": tuple(m for m in DEFAULT_MODELS if m not in EFFECTS_MODELS),
    "effects": EFFECTS_MODELS,
}
#: pool -> the gateway routes whose arrivals are its demand (KServe pass-through
#: calls land on the feed pool's counters: the ranker and the towers live there)
POOL_ROUTES: Mapping[str, tuple[str, ...]] = {"feed": ("feed", "infer"), "effects": ("effects",)}
DEFAULT_TARGETS: Mapping[str, float] = {"feed": 200.0, "effects": 20.0}


@dataclass(frozen=True)
class AutoscaleOptions:
    #: pool -> requests/s one pod serves well
    targets: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    max_replicas: int = 10
    #: CPU cores per pod (a cgroup quota); None: no limit
    cpu_per_pod: float | None = None
    tick_s: float = 2.0
    #: warm pods kept ready outside each pool, taken at once by a scale-up
    spares: int = 0
    #: cores of quota while a pod starts, settled to ``cpu_per_pod`` once it is ready
    #: (None: ``cpu_per_pod`` from the start)
    startup_cpu: float | None = 1.0
    #: start pods from a fork server that has imported their modules once (no
    #: interpreter start, no imports: ~0.7 s of CPU a pod), else as new processes
    fork_server: bool = True


def parse_targets(items: list[str]) -> dict[str, float]:
    """``["effects=20", "feed=300"]`` over the defaults; ValueError names the bad item."""
    targets = dict(DEFAULT_TARGETS)
    for item in items:
        pool, sep, value = item.partition("=")
        if not sep or pool not in PRODUCT_POOLS:
            raise ValueError(
                f"{item!r}: expected POOL=REQ_PER_S, POOL one of {list(PRODUCT_POOLS)}"
            )
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {value!r} is not a number") from None
        if not rate > 0:
            raise ValueError(f"{item!r}: the rate must be > 0")
        targets[pool] = rate
    return targets


class AdminSink:
    """Endpoint changes through the control plane's admin API."""

    def __init__(self, admin: str) -> None:
        self.admin = admin

    def set_endpoints(self, pool: str, endpoints: list[dict]) -> None:
        put_endpoints(self.admin, pool, endpoints)


class ScaledPools:
    def __init__(
        self,
        options: AutoscaleOptions,
        repo: Path,
        admin: str,
        minimum: int = 1,
        threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.minimum = minimum
        self.clock = clock
        self.limiter = CpuLimiter(options.cpu_per_pod) if options.cpu_per_pod else None
        self.forks: ForkServer | None = None
        if options.fork_server:
            try:
                self.forks = ForkServer(POD_PRELOAD).start()
            except (LaunchError, OSError):
                if self.limiter is not None:
                    self.limiter.close()
                raise
        sink = AdminSink(admin)
        self.providers = {
            pool: LocalProvider(
                pool,
                repo,
                list(models),
                sink,
                clock,
                self.limiter,
                threads,
                spares=options.spares,
                startup_cpu=options.startup_cpu,
                spawner=self.forks.spawn if self.forks is not None else spawn,
            )
            for pool, models in PRODUCT_POOLS.items()
        }
        self.autoscalers: dict[str, Autoscaler] = {}

    def start(self, timeout_s: float = 300.0) -> None:
        """Grow every pool to its minimum, and its spares (pods start side by side),
        before returning."""
        deadline = self.clock() + timeout_s
        while True:
            statuses = [p.reconcile(self.minimum) for p in self.providers.values()]
            spares = self.options.spares
            if all(s.ready >= self.minimum and s.spare >= spares for s in statuses):
                return
            if self.clock() > deadline:
                raise LaunchError(f"the pools did not reach {self.minimum} ready pods in time")
            time.sleep(0.1)

    def attach(self, gateway_metrics: str) -> None:
        """Autoscalers over the gateway's metrics (``http://host:port/metrics``)."""
        for pool, provider in self.providers.items():
            settings = PolicySettings(
                target_rps_per_pod=self.options.targets[pool],
                min_replicas=self.minimum,
                max_replicas=self.options.max_replicas,
                tick_s=self.options.tick_s,
            )
            source = ScrapeSource([gateway_metrics], POOL_ROUTES[pool], self.clock)
            self.autoscalers[pool] = Autoscaler(pool, source, provider, settings, self.clock)

    def tick(self) -> list[tuple[str, Decision, ProviderStatus]]:
        out = []
        for pool, autoscaler in self.autoscalers.items():
            decision = autoscaler.tick()
            out.append((pool, decision, self.providers[pool].status()))
        return out

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()
        if self.forks is not None:
            self.forks.close()
        if self.limiter is not None:
            self.limiter.close()
