"""What a model's ``execute`` returns for one batch: a module of its own, importing
neither ONNX Runtime nor the batcher, so the batcher and the fork server's preload
(servicekit.zygote) stay clear of ONNX Runtime, and the offline tools that use
``onnx_model`` stay clear of the batcher."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class BatchResult:
    outputs: list[dict[str, np.ndarray]]
    compute_s: float
    #: CPU seconds of the run in its calling thread (ONNX Runtime runs a one-thread
    #: session there; a larger intra-op pool's threads are not counted). None: unknown
    cpu_s: float | None = None
