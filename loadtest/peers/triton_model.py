"""Triton Python-backend model: ONNX Runtime on the batches Triton's dynamic batcher
forms. Copied into the Triton model repository as ``<model>/1/model.py``; runs inside
Triton's Python stub (in the Triton venv), not in tenfold's."""

import json

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            params["onnx_path"], options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        # one ORT call for every request Triton batched together, then split the rows back
        arrays = [
            [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
            for r in requests
        ]
        rows = [a[0].shape[0] for a in arrays]
        feed = {
            name: np.concatenate([a[i] for a in arrays]) if len(arrays) > 1 else arrays[0][i]
            for i, name in enumerate(self.inputs)
        }
        results = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for n in rows:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + n]))
                for name, out in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
