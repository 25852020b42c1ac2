"""One pod under its CPU quota meets a 10x surge: what it answers in time, what it
refuses at once, and what it lets run past the deadline (``tenfold loadtest bench
pod-surge``).

The pod is started as the autoscaler starts one (forked from the fork server, under
the start-up boost, settled to ``--cpu`` cores), loading the effects model; a client
on gRPC offers ``--base`` requests/s for ``--base-s`` seconds, then ``--surge`` times
that for ``--surge-s`` seconds, each with a ``--deadline-s`` deadline, open loop. In
the drill the first pod is alone in front of the surge for the seconds the new pods
take to start; a request it admits and cannot finish in time is a 504. The goal is 0
past the deadline; refusals (RESOURCE_EXHAUSTED) are retried elsewhere or shed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from autoscale.cgroups import CgroupError, CpuLimiter
from autoscale.local import LocalProvider
from inference.launch import POD_PRELOAD
from loadtest.targets import LoadTestError
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit.zygote import ForkServer

MODEL = "effects_cartoon"
INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class PodSurgePlan:
    repository: Path
    cpu: float = 0.15
    base: float = 2.3
    surge: float = 10.0
    base_s: float = 20.0
    surge_s: float = 6.0
    deadline_s: float = 5.0
    runs: int = 5
    side: int = 256


class _Sink:
    def __init__(self) -> None:
        self.endpoints: list[dict] = []

    def set_endpoints(self, pool: str, endpoints: list[dict]) -> None:
        self.endpoints = endpoints


def _request(side: int) -> pb.ModelInferRequest:
    image = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="UINT8", shape=[1, side, side, 3]
    )
    return pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor], raw_input_contents=[image.tobytes()]
    )


async def _offer(address: str, plan: PodSurgePlan) -> dict[str, dict[str, int]]:
    """Open loop: base, then surge; each answer's gRPC status, by phase."""
    options = [("grpc.max_send_message_length", 64 << 20)]
    options.append(("grpc.max_receive_message_length", 64 << 20))
    request = _request(plan.side).SerializeToString()
    outcomes: dict[str, dict[str, int]] = {"base": {}, "surge": {}}
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(INFER)

        async def one(phase: str) -> None:
            try:
                await call(request, timeout=plan.deadline_s)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            outcomes[phase][code] = outcomes[phase].get(code, 0) + 1

        tasks, due = [], time.monotonic()
        phases = (("base", plan.base, plan.base_s), ("surge", plan.base * plan.surge, plan.surge_s))
        for phase, rate, seconds in phases:
            end = due + seconds
            while due < end:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.ensure_future(one(phase)))
                due += 1.0 / rate
        await asyncio.gather(*tasks)
    return outcomes


def one_run(plan: PodSurgePlan, forks: ForkServer, limiter: CpuLimiter) -> dict:
    sink = _Sink()
    provider = LocalProvider(
        "effects",
        plan.repository,
        [MODEL],
        sink,
        time.monotonic,
        limiter,
        startup_cpu=1.0,
        spawner=forks.spawn,
    )
    try:
        deadline = time.monotonic() + 120
        while provider.reconcile(1).ready < 1:
            if time.monotonic() > deadline or provider.failed:
                raise RuntimeError("the pod did not become ready")
            time.sleep(0.05)
        return asyncio.run(_offer(sink.endpoints[0]["grpc"], plan))
    finally:
        provider.close()


def benchmark(plan: PodSurgePlan, out: Path | None = None) -> dict:
    if not (plan.repository / MODEL).is_dir():
        raise LoadTestError(
            f"{plan.repository} has no {MODEL} model: run `tenfold models build` first"
        )
    try:
        limiter = CpuLimiter(plan.cpu)
    except CgroupError as exc:
        raise LoadTestError(f"the pod's CPU quota: {exc}") from None
    try:
        forks = ForkServer(POD_PRELOAD).start()
    except BaseException:
        limiter.close()
        raise
    runs = []
    try:
        for number in range(1, plan.runs + 1):
            outcome = one_run(plan, forks, limiter)
            runs.append(outcome)
            surge = outcome["surge"]
            print(
                f"run {number}/{plan.runs}: surge OK {surge.get('OK', 0)}, refused "
                f"{surge.get('RESOURCE_EXHAUSTED', 0)}, past the deadline "
                f"{surge.get('DEADLINE_EXCEEDED', 0)}; base {outcome['base']}",
                flush=True,
            )
    finally:
        limiter.close()
        forks.close()
    late = [r["surge"].get("DEADLINE_EXCEEDED", 0) for r in runs]
    results = {
        "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
        "runs": runs,
        "summary": {"runs_with_late_answers": sum(1 for n in late if n), "late": late},
    }
    print(json.dumps(results["summary"]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    return results
