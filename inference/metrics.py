"""Prometheus metrics of an inference pod, in a registry of its own (one per server).

Names follow ``tenfold_<component>_<what>_<unit>``; labels are ``model`` and
``version``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LABELS = ("model", "version")


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total & co: the pod's CPU per pool on the dashboard
        ProcessCollector(registry=r)
        self.success = Counter(
            "tenfold_inference_request_success",
            "Inference requests that succeeded.",
            _LABELS,
            registry=r,
        )
        self.failure = Counter(
            "tenfold_inference_request_failure",
            "Inference requests that failed, by reason (the error class).",
            (*_LABELS, "reason"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "tenfold_inference_request_duration_seconds",
            "End-to-end time of an inference request inside the pod (decode to encode).",
            _LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "tenfold_inference_queue_duration_seconds",
            "Time a request waited in the dynamic batcher's queue.",
            _LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "tenfold_inference_compute_duration_seconds",
            "ONNX Runtime execution time of one batch.",
            _LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tenfold_inference_batch_size_rows",
            "Rows per executed batch.",
            _LABELS,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "tenfold_inference_pending_requests",
            "Requests queued in the batcher, waiting for a model instance.",
            _LABELS,
            registry=r,
        )
        self.batch_isolations = Counter(
            "tenfold_inference_batch_isolations",
            "Failed batches split to find the requests that fail (each split counted).",
            _LABELS,
            registry=r,
        )
        self.model_ready = Gauge(
            "tenfold_inference_model_ready",
            "1 when the model version is loaded and warmed up, else 0.",
            _LABELS,
            registry=r,
        )

    def observer(self, model: str, version: str) -> ModelObserver:
        return ModelObserver(self, model, version)


class ModelObserver:
    """The batcher's view of the metrics of one model version (see BatchObserver)."""

    def __init__(self, metrics: InferenceMetrics, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        self._metrics = metrics
        self._labels = labels
        self._pending = metrics.pending.labels(**labels)
        self._queue = metrics.queue_seconds.labels(**labels)
        self._compute = metrics.compute_seconds.labels(**labels)
        self._batch = metrics.batch_size.labels(**labels)
        self._request = metrics.request_seconds.labels(**labels)
        self._success = metrics.success.labels(**labels)
        self._isolations = metrics.batch_isolations.labels(**labels)  # shown from 0

    def queued(self, depth: int) -> None:
        self._pending.set(depth)

    def dispatched(self, rows: int, queue_times_s: Sequence[float]) -> None:
        self._batch.observe(rows)
        for seconds in queue_times_s:
            self._queue.observe(seconds)

    def computed(self, compute_s: float) -> None:
        self._compute.observe(compute_s)

    def isolated(self, requests: int) -> None:
        self._isolations.inc()

    def finished(self, seconds: float) -> None:
        self._success.inc()
        self._request.observe(seconds)

    def failed(self, reason: str) -> None:
        self._metrics.failure.labels(**self._labels, reason=reason).inc()
