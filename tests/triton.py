"""tritonclient helpers shared by the tests."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import np_to_triton_dtype


def grpc_infer(
    client: tgrpc.InferenceServerClient, model: str, rows: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Infer ``rows`` (input name -> array) and return every output by name."""
    inputs = []
    for name, value in rows.items():
        item = tgrpc.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        item.set_data_from_numpy(value)
        inputs.append(item)
    answer = client.infer(model, inputs)
    names = [o.name for o in client.get_model_metadata(model).outputs]
    return {n: answer.as_numpy(n) for n in names}
