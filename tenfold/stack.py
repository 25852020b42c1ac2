"""A local stack on loopback, as child processes; ``tenfold up`` (what ``make run``
calls) runs it in the foreground.

With the mesh (the default) it starts, in order and each one ready before the next:
the control plane, the inference pods (each added to its pool's endpoint set once
ready), the gateway workers (their pools follow the control plane) and Envoy on the
public ports. On SIGINT/SIGTERM it stops in the reverse order: Envoy drains its
listeners, the gateway drains, each pod leaves its endpoint set before it drains, and
the control plane stops last. ``--no-mesh`` runs the gateway on the public ports
with fixed endpoints, as before the mesh. A pod that exits is restarted on its ports
(out of its pool until ready) while the others serve; any other process exiting
stops the stack.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autoscale.cgroups import CgroupError
from gateway.events.launch import start_processor
from gateway.launch import DEFAULT_MODELS, gateway_config, start_gateway
from inference.launch import start_pod
from mesh.envoy import EnvoyProcess, start_envoy
from mesh.launch import put_endpoints, start_control_plane
from servicekit.launcher import LaunchError, ServiceProcess, free_ports
from servicekit.redis import redis_url, start_redis
from servicekit.supervisor import RestartBudget
from tenfold.live import StackView, TrafficWatch
from tenfold.scaling import PRODUCT_POOLS, AutoscaleOptions, ScaledPools

POD_POOL = "default"
#: a pod that exits is restarted, unless pods exited this often within the window
MAX_RESTARTS, RESTART_WINDOW_S = 3, 60.0
EXAMPLES = """\
Try, from another shell:
  curl -s -X POST localhost:{http}/v1/feed -H 'content-type: application/json' \\
       -d '{{"user_id": 42, "count": 10,
            "context": {{"hour": 20, "device": "ios", "network": "wifi"}}}}'
  curl -s localhost:{http}/v1/effects
  curl -s -X POST localhost:{http}/v1/effects/cartoon -H 'content-type: image/jpeg' \\
       --data-binary @docs/img/example.jpg -o cartoon.jpg
  curl -s -X POST localhost:{http}/v1/events -H 'content-type: application/json' \\
       -d '{{"events": [{{"user_id": 42, "item_id": 7, "type": "like"}}]}}'  # docs/events.md
  curl -s localhost:{http}/v2/models/feed_ranker          # KServe v2{kserve}
  curl -s localhost:{http}/metrics | grep tenfold_gateway
  grpcurl -plaintext -d '{{"user_id": "42", "count": 3}}' \\
       localhost:{grpc} tenfold.v1.Feed/GetFeed          # gRPC, via server reflection
"""


@dataclass(frozen=True)
class StackOptions:
    repo: Path
    pods: int = 1
    port: int = 8080
    grpc_port: int = 8081
    workers: int = 1
    threads: int = 1
    mesh: bool = True
    #: Envoy worker threads (the edge shares the machine with the gateway and pods)
    envoy_concurrency: int = 1
    drain_s: float = 1.0
    #: (certificate chain, private key) PEM files: TLS on both edge listeners
    tls: tuple[Path, Path] | None = None
    #: scale the pod pool on demand (``pods`` is then the minimum)
    autoscale: AutoscaleOptions | None = None
    #: feedback events and user state: a local Redis keeping its data here, and the
    #: stream processor (None: no events, the feed is stateless)
    state_dir: Path | None = None


def mesh_file(options: StackOptions) -> dict:
    """The mesh of the local stack: the public ports at the edge; one pod pool, or one
    per product when the pools scale."""
    tls = None
    if options.tls is not None:
        tls = {
            "cert_file": str(options.tls[0].resolve()),
            "key_file": str(options.tls[1].resolve()),
        }
    return {
        "listeners": {
            "http": {"port": options.port, "protocol": "http", "tls": tls},
            "grpc": {"port": options.grpc_port, "protocol": "grpc", "tls": tls},
        },
        "pools": {"gateway": {}, **{p: {"models": list(m)} for p, m in pod_pools(options).items()}},
    }


def pod_pools(options: StackOptions) -> dict[str, tuple[str, ...]]:
    if options.autoscale is not None:
        return dict(PRODUCT_POOLS)
    return {POD_POOL: tuple(DEFAULT_MODELS)}


def _pod_set(pods: list[ServiceProcess]) -> list[dict]:
    return [p.endpoint for p in pods]


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.control_plane: ServiceProcess | None = None
        self.pods: list[ServiceProcess] = []
        self.gateway: ServiceProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.redis: ServiceProcess | None = None
        self.processor: ServiceProcess | None = None
        self.ports: dict[str, int] = {}
        self.scaled: ScaledPools | None = None

    @property
    def children(self) -> list[ServiceProcess]:
        out = [self.redis, self.processor, self.control_plane, *self.pods, self.gateway]
        if self.envoy is not None:
            out.append(self.envoy.process)
        return [c for c in out if c is not None]

    def _start_events(self, say) -> dict:
        """Redis and the stream processor; the gateway's ``events`` settings."""
        o = self.options
        if o.state_dir is None:
            return {}
        self.redis = start_redis(o.state_dir)
        url = redis_url(self.redis)
        self.processor = start_processor(url, "processor-1")
        say(self.processor.new_output(), end="")
        say(f"tenfold: events: Redis {url} (data in {o.state_dir}), stream processor ready")
        return {"events": {"redis_url": url}}

    def start(self, say=print) -> None:
        o = self.options
        events = self._start_events(say)
        if o.mesh:
            self.control_plane = start_control_plane(mesh_file(o))
            say(self.control_plane.new_output(), end="")
        if o.autoscale is not None:
            self._start_pools(say)
        for i in range(o.pods if o.autoscale is None else 0):
            pod = start_pod(o.repo, intra_op_threads=o.threads)
            self.pods.append(pod)
            self._publish_pods(self.pods)
            say(f"tenfold: pod {i + 1}/{o.pods} ready (grpc {pod.grpc}, http {pod.http})")
        if self.control_plane is None:
            config = gateway_config(o.repo, self.pods, workers=o.workers, **events)
            self.gateway = start_gateway(config, port=o.port, grpc_port=o.grpc_port)
            self.ports = {"http": self.gateway.http_port, "grpc": self.gateway.grpc_port}
            say(self.gateway.new_output(), end="")
            return
        config = gateway_config(
            o.repo, self.pods, workers=o.workers, xds=self.control_plane.grpc, **events
        )
        if self.scaled is not None:  # a pool per product
            config["pools"] = {p: {"models": list(m)} for p, m in PRODUCT_POOLS.items()}
            config["feed_pool"], config["effects_pool"] = "feed", "effects"
        # behind Envoy the gateway's ports are private: any free ones, but several
        # workers share fixed ports (SO_REUSEPORT), so those are chosen here
        ports = {}
        if o.workers > 1:
            ports["port"], ports["grpc_port"] = free_ports(2)
        self.gateway = start_gateway(config, **ports)
        say(self.gateway.new_output(), end="")
        if self.scaled is not None:
            self.scaled.attach(f"http://{self.gateway.http}/metrics")
        put_endpoints(self.control_plane.http, "gateway", [self.gateway.endpoint])
        self.envoy = start_envoy(
            "tenfold-edge", "127.0.0.1", self.control_plane.grpc_port, o.envoy_concurrency
        )
        self.ports = self.envoy.wait_listeners(["http", "grpc"])
        scheme = "https" if o.tls else "http"
        say(
            f"tenfold: edge (Envoy) ready: {scheme} 127.0.0.1:{self.ports['http']}, "
            f"grpc 127.0.0.1:{self.ports['grpc']}, admin 127.0.0.1:{self.envoy.admin_port}"
        )

    def _publish_pods(self, pods: list[ServiceProcess]) -> None:
        """With the mesh, ``pods`` become the pod pool's endpoint set."""
        if self.control_plane is not None:
            put_endpoints(self.control_plane.http, POD_POOL, _pod_set(pods))

    def restart_pod(self, pod: ServiceProcess, say) -> None:
        """A pod exited: it leaves its pool's endpoint set, and a new one starts on the
        same ports (the gateway's fixed endpoints without the mesh stay right) and
        joins once ready. The other pods serve meanwhile."""
        index = self.pods.index(pod)
        say(pod.new_output(), end="")
        say(
            f"tenfold: pod {index + 1} (grpc {pod.grpc}) exited with code "
            f"{pod.proc.returncode}; restarting it"
        )
        self._publish_pods([p for p in self.pods if p is not pod])
        ports = ("--http-port", str(pod.http_port), "--grpc-port", str(pod.grpc_port))
        new = start_pod(self.options.repo, *ports, intra_op_threads=self.options.threads)
        self.pods[index] = new
        self._publish_pods(self.pods)
        say(f"tenfold: pod {index + 1} ready again (grpc {new.grpc}, http {new.http})")

    def _start_pools(self, say) -> None:
        """The product pools under local providers, grown to their minimum first."""
        o, a = self.options, self.options.autoscale
        self.scaled = ScaledPools(a, o.repo, self.control_plane.http, o.pods, o.threads)
        self.scaled.start()
        limit = f"{a.cpu_per_pod:g} CPU each" if a.cpu_per_pod else "no CPU limit"
        spares = f", {a.spares} warm spare(s)" if a.spares else ""
        for pool, models in PRODUCT_POOLS.items():
            say(
                f"tenfold: pool {pool} ({', '.join(models)}): {o.pods} pod(s) ready "
                f"({limit}){spares}"
            )

    def stop(self, say=print) -> None:
        """Envoy drains, then the gateway; each pod leaves its pool before it drains."""
        if self.envoy is not None:
            say("tenfold: draining the edge (Envoy)")
            self.envoy.drain(self.options.drain_s)
            self.envoy.stop()
        if self.gateway is not None:
            self.gateway.stop()
            say(self.gateway.new_output(), end="")
        while self.pods:
            pod = self.pods.pop()
            if self.control_plane is not None and self.control_plane.proc.poll() is None:
                try:
                    put_endpoints(self.control_plane.http, POD_POOL, _pod_set(self.pods))
                except OSError:
                    pass
            pod.stop()
            say(pod.new_output(), end="")
        if self.scaled is not None:
            self.scaled.close()
        if self.control_plane is not None:
            self.control_plane.stop()
            say(self.control_plane.new_output(), end="")
        for child in (self.processor, self.redis):  # Redis last: it has the state
            if child is not None:
                child.stop()
                say(child.new_output(), end="")


def up(options: StackOptions) -> int:
    """Run the stack in the foreground until SIGINT/SIGTERM, then stop it all."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(options)

    def say(text: str, end: str = "\n") -> None:
        print(text, end=end, flush=True)

    try:
        try:
            stack.start(say)
        except (CgroupError, LaunchError) as exc:
            print(f"tenfold: cannot start the stack: {exc}", file=sys.stderr)
            return 1
        kserve = " (straight to the pod, via Envoy)" if options.mesh else " (gateway pass-through)"
        say(EXAMPLES.format(http=stack.ports["http"], grpc=stack.ports["grpc"], kserve=kserve))
        with contextlib.ExitStack() as scope:
            view = None
            if stack.scaled is not None and sys.stdout.isatty():  # a live table of the pools
                watch = TrafficWatch(f"http://{stack.gateway.http}/metrics")
                view = scope.enter_context(StackView(stack.scaled, watch))
            return _serve(stack, stop, view.say if view else say, view)
    finally:
        stack.stop(say)


def _serve(stack: Stack, stop: threading.Event, say, view: StackView | None) -> int:
    """Until ``stop``: autoscale (each decision printed, or the live ``view``), relay
    what the services print, restart dead pods; the exit code."""
    next_tick, last = time.monotonic(), {}
    restarts = RestartBudget(MAX_RESTARTS, RESTART_WINDOW_S, time.monotonic)
    while not stop.wait(0.5):
        if stack.scaled is not None and time.monotonic() >= next_tick:
            next_tick += stack.scaled.options.tick_s
            for pool, decision, status in stack.scaled.tick():
                seen = (decision.desired, status.ready, status.starting, status.stopping)
                if view is None and seen != last.get(pool):
                    say(
                        f"tenfold autoscale {pool}: {decision.reason}; starting "
                        f"{status.starting}, stopping {status.stopping}"
                    )
                    last[pool] = seen
            if view is not None:
                view.update()
        for child in stack.children:  # what the services say from now on
            say(child.new_output(), end="")
        for pod in [p for p in stack.pods if p.proc.poll() is not None]:
            if not restarts.allow():
                print(
                    f"tenfold: pods exited {MAX_RESTARTS + 1} times within "
                    f"{RESTART_WINDOW_S:g} s; stopping",
                    file=sys.stderr,
                )
                return 1
            try:
                stack.restart_pod(pod, say)
            except LaunchError as exc:
                print(f"tenfold: cannot restart the pod: {exc}; stopping", file=sys.stderr)
                return 1
        if any(p.proc.poll() is not None for p in stack.children):
            print("tenfold: a process of the stack exited; stopping", file=sys.stderr)
            return 1
    return 0
