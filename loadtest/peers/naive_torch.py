"""The "native PyTorch" peer: an aiohttp server that runs the PyTorch module once per
request, in the handler, with no batching: what a team writes on day one. It speaks
enough KServe v2 over HTTP (metadata, ready, infer with the binary extension, using
tenfold's own codec so the protocol costs the same) for the same load to reach it.

    python -m loadtest.peers.naive_torch --repository DIR --models feed_ranker [--threads 2]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from aiohttp import web

from inference.protocol.datatypes import kserve_datatype
from inference.protocol.kserve_http import decode_request, encode_response
from inference.protocol.tensors import InferResponse, Tensor
from loadtest.peers import served_model
from loadtest.peers.serving import peer_arguments, serve
from servicekit.web import json_response


class Model:
    def __init__(self, directory: Path):
        model = served_model(directory)
        self.name = model.config.name
        self.inputs = model.input_metadata()
        self.outputs = [o.name for o in model.config.output]
        self.module = torch.load(directory / "pytorch" / "model.pt", weights_only=False).eval()

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "platform": "pytorch_naive",
            "inputs": self.inputs,
            "outputs": [{"name": n} for n in self.outputs],
        }

    def run(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(arrays[i["name"]]) for i in self.inputs))
        if isinstance(out, dict):
            out = [out[n] for n in self.outputs]
        elif isinstance(out, torch.Tensor):
            out = [out]
        return [t.numpy() for t in out]


def create_app(models: dict[str, Model]) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        return json_response({"ready": True})

    async def metadata(request: web.Request) -> web.Response:
        return json_response(models[request.match_info["model"]].metadata())

    async def infer(request: web.Request) -> web.Response:
        model = models[request.match_info["model"]]
        header = request.headers.get("inference-header-content-length")
        decoded = decode_request(
            model.name, "", await request.read(), None if header is None else int(header)
        )
        arrays = {t.name: t.data for t in decoded.inputs}
        outputs = model.run(arrays)  # on the event loop: one request at a time
        tensors = tuple(
            Tensor(n, kserve_datatype(a.dtype), a.shape, a)
            for n, a in zip(model.outputs, outputs, strict=True)
        )
        body, headers = encode_response(decoded, InferResponse(model.name, "1", tensors))
        return web.Response(body=body, headers=headers)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{model}", metadata)
    app.router.add_post("/v2/models/{model}/infer", infer)
    return app


def main() -> None:
    parser = peer_arguments(__doc__.split("\n\n")[0], threads=2)
    parser.add_argument("--models", required=True, help="comma-separated model names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {n: Model(args.repository / n) for n in args.models.split(",")}
    serve(create_app(models), "naive torch", args.port, args.ready_file)


if __name__ == "__main__":
    main()
