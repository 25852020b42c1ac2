"""The local provider: one inference pod process per replica on free loopback ports,
each loading only its pool's models and (unless told not to) in its own CPU cgroup.

``reconcile(desired)`` is called once per decision and never blocks on a pod: pods
start in the background and join the pool (the mesh's endpoint set) only once ready;
on scale-down a pod leaves the pool first, and is drained (SIGTERM) only after
``leave_grace_s``, so no client is still sending to it; its cgroup goes when it exits.

Warm spares (``spares``): that many ready pods are kept outside the pool, loaded and
warmed but sent nothing, so a scale-up takes them at once instead of waiting for pods
to start (seconds under a CPU quota); new spares start once the pool is whole. On
scale-down the pods that leave the pool become the spares first. They cost memory,
not CPU.

Pods start through ``spawner``: the launcher's ``spawn`` (a new interpreter each), or a
fork server (``servicekit.zygote``) that has imported the pod's modules once, so a pod
pays its model load and warm-up only.

Start-up boost (``startup_cpu``): a pod starts under that quota, at a low weight (it
takes what the serving path leaves idle), and is settled to its own quota once ready,
before it serves (an effects pod: 5 s to ready under 0.15 CPU, 0.8 s without a quota).
The only module of the autoscaler that touches processes and cgroups.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autoscale.cgroups import CpuLimiter
from inference.launch import pod_command
from servicekit.launcher import LaunchError, ServiceProcess, Spawner, launch, spawn
from servicekit.ready import read_ready

log = logging.getLogger("tenfold.autoscale")
#: a draining pod that has not exited after this long is killed
KILL_AFTER_S = 30.0


class EndpointSink(Protocol):
    def set_endpoints(self, pool: str, endpoints: list[dict]) -> None:
        """Replace ``pool``'s endpoint set (``[{http, grpc}]``)."""


@dataclass
class Pod:
    name: str
    process: ServiceProcess
    started: float
    left_at: float | None = None  # when it left the pool
    drain_at: float | None = None  # when it was sent SIGTERM


@dataclass(frozen=True)
class ProviderStatus:
    ready: int
    starting: int
    stopping: int
    failed: int
    spare: int = 0  # ready, outside the pool


@dataclass
class LocalProvider:
    pool: str
    repository: Path
    models: list[str]
    sink: EndpointSink
    clock: Callable[[], float]
    limiter: CpuLimiter | None = None
    threads: int = 1
    leave_grace_s: float = 1.0
    extra_args: tuple[str, ...] = ()
    spares: int = 0
    #: cores of quota while a pod starts (None: its own quota from the start)
    startup_cpu: float | None = None
    #: how pod processes start: ``spawn`` (a new interpreter), or a fork server's
    spawner: Spawner = spawn
    _pods: list[Pod] = field(default_factory=list)  # ready, in pool order
    _spare: list[Pod] = field(default_factory=list)  # ready, outside the pool
    _starting: list[Pod] = field(default_factory=list)
    _leaving: list[Pod] = field(default_factory=list)
    _draining: list[Pod] = field(default_factory=list)
    _count: int = 0
    failed: int = 0

    # -- the one entry point --------------------------------------------------------------
    def reconcile(self, desired: int) -> ProviderStatus:
        now = self.clock()
        self._promote(now)
        self._retire(now)
        changed = False
        while len(self._pods) < desired and self._spare:  # spares join at once
            self._pods.append(self._spare.pop(0))
            changed = True
        if len(self._pods) > desired:  # the surplus leaves; the first become spares
            out, self._pods = self._pods[desired:], self._pods[:desired]
            changed = True
            for pod in out:
                if len(self._spare) < self.spares:
                    self._spare.append(pod)
                else:
                    pod.left_at = now
                    self._leaving.append(pod)
        if changed:
            self._publish()
        # on the way: what the pool still lacks; new spares only once it is whole (pods
        # starting side by side slow each other and the ones serving: in a drill with
        # two spares, seven starting at once left the three serving 0-5 req/s of 13.5)
        lacking = desired - len(self._pods)
        if lacking <= 0:
            lacking = self.spares - len(self._spare)
        wanted = lacking - len(self._starting)
        for _ in range(max(0, wanted)):
            self._start(now)
        surplus = -wanted
        while surplus > 0 and self._starting:  # not ready yet: cheapest to drop
            self._drain(self._starting.pop(), now)
            surplus -= 1
        while surplus > 0 and len(self._spare) > self.spares:
            self._drain(self._spare.pop(), now)
            surplus -= 1
        return self.status()

    def status(self) -> ProviderStatus:
        stopping = len(self._leaving) + len(self._draining)
        return ProviderStatus(
            len(self._pods), len(self._starting), stopping, self.failed, len(self._spare)
        )

    def ready_members(self) -> list[dict]:
        return [p.process.endpoint for p in self._pods]

    def pids(self) -> list[int]:
        everyone = (*self._pods, *self._spare, *self._starting, *self._leaving, *self._draining)
        return [p.process.pid for p in everyone]

    def close(self) -> None:
        """Leave the pool, drain and stop every pod, release their cgroups (the limiter
        itself belongs to whoever made it)."""
        everyone = [*self._pods, *self._spare, *self._starting, *self._leaving, *self._draining]
        self._pods, self._spare, self._starting = [], [], []
        self._leaving, self._draining = [], []
        try:
            self._publish()
        except OSError as exc:
            log.warning("could not empty pool %s: %s", self.pool, exc)
        for pod in everyone:
            if pod.process.proc.poll() is None:
                pod.process.proc.terminate()
        for pod in everyone:
            self._stop(pod, terminate=False)

    # -- steps ----------------------------------------------------------------------------
    def _start(self, now: float) -> None:
        self._count += 1
        name = f"{self.pool}-{self._count}"
        args = [a for m in self.models for a in ("--load-model", m)]
        cmd = pod_command(self.repository, *args, *self.extra_args, intra_op_threads=self.threads)
        try:
            process = launch(cmd, f"pod {name}", wait=False, spawner=self.spawner)
        except (LaunchError, OSError) as exc:
            log.error("pod %s: cannot start: %s", name, exc)
            self.failed += 1
            return
        if self.limiter is not None:
            try:
                if self.startup_cpu is None:
                    self.limiter.limit(process.pid, name)
                else:
                    self.limiter.start(process.pid, name, self.startup_cpu)
            except OSError as exc:
                log.error("pod %s: cannot set its CPU limit: %s", name, exc)
                process.stop(5)
                self.failed += 1
                return
        self._starting.append(Pod(name, process, now))
        log.info("pod %s starting (pid %d)", name, process.pid)

    def _promote(self, now: float) -> None:
        """Ready pods become spares; ``reconcile`` moves them into the pool as needed."""
        for pod in list(self._starting):
            process = pod.process
            if process.proc.poll() is not None:
                self._starting.remove(pod)
                self.failed += 1
                log.error("pod %s exited while starting: %s", pod.name, process.output()[-500:])
                self._release(pod)
                continue
            try:
                state = read_ready(process.ready_file)
            except (OSError, ValueError):
                state = None
            if state is not None and state.state == "ready":
                process.ports = dict(state.ports)
                self._starting.remove(pod)
                if self.limiter is not None and self.startup_cpu is not None:
                    try:
                        self.limiter.settle(pod.name, process.pid)  # the boost ends first
                    except OSError as exc:
                        log.error("pod %s: cannot settle its CPU limit: %s", pod.name, exc)
                        self.failed += 1
                        self._stop(pod)
                        continue
                self._spare.append(pod)
                log.info("pod %s ready after %.1f s", pod.name, now - pod.started)

    def _retire(self, now: float) -> None:
        """Left the pool long enough ago: drain. Drained: release. Stuck: kill."""
        for pod in list(self._leaving):
            if pod.left_at is not None and now - pod.left_at >= self.leave_grace_s:
                self._leaving.remove(pod)
                self._drain(pod, now)
        for pod in list(self._draining):
            if pod.process.proc.poll() is not None:
                self._draining.remove(pod)
                self._stop(pod, terminate=False)
            elif pod.drain_at is not None and now - pod.drain_at > KILL_AFTER_S:
                pod.process.proc.kill()

    def _drain(self, pod: Pod, now: float) -> None:
        if pod.process.proc.poll() is None:
            pod.process.proc.terminate()
        pod.drain_at = now
        self._draining.append(pod)

    def _stop(self, pod: Pod, terminate: bool = True) -> None:
        try:
            pod.process.stop(KILL_AFTER_S, terminate=terminate)
        except subprocess.TimeoutExpired:
            pod.process.proc.kill()
            pod.process.proc.wait()
        except (LaunchError, OSError) as exc:
            log.warning("pod %s: %s", pod.name, exc)
        self._release(pod)

    def _release(self, pod: Pod) -> None:
        if self.limiter is not None:
            self.limiter.release(pod.name)

    def _publish(self) -> None:
        self.sink.set_endpoints(self.pool, self.ready_members())
