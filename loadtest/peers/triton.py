"""NVIDIA Triton as a peer: the ``tritonserver`` binary shipped in the
``nvidia-pytriton`` wheel, in its own venv (``make triton-venv``: it pins numpy<2),
serving our ONNX models through its Python backend running ONNX Runtime, with Triton's
dynamic batcher configured like the tenfold pod (same instances, threads, preferred
batch sizes and queue delay).

The wheel has no ONNX Runtime backend, hence the Python backend: Triton batches, and
``triton_model.py`` runs one ORT call per batch. Its stub embeds libpython, so the
interpreter's own shared library must be on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import shutil
import sysconfig
import time
import urllib.request
from pathlib import Path

from google.protobuf import text_format

from inference.repository.model import THREADS_PARAMETER
from loadtest.peers import served_model, threads
from protos.kserve.v2 import model_config_pb2
from servicekit.launcher import ServiceProcess, free_ports, spawn

HERE = Path(__file__).parent


class TritonUnavailable(RuntimeError):
    pass


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found or not (found[0] / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
        raise TritonUnavailable(f"no nvidia-pytriton in {venv}: run `make triton-venv`")
    return found[0]


def model_repository(source: Path, models: list[str], out: Path) -> Path:
    """A Triton repository serving ``models`` of ``source`` via the Python backend."""
    for name in models:
        model = served_model(source / name)
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(model.config)
        config.ClearField("platform")
        config.ClearField("optimization")
        config.ClearField("model_warmup")
        config.backend = "python"
        config.parameters[THREADS_PARAMETER].string_value = str(threads(model))
        config.parameters["onnx_path"].string_value = str(model.served_file.resolve())
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        (out / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        shutil.copy(HERE / "triton_model.py", out / name / "1" / "model.py")
    return out


def start(venv: Path, repository: Path, work: Path) -> ServiceProcess:
    """Start tritonserver on loopback ports; returns when its models are ready."""
    site = site_packages(venv)
    dist = site / "pytriton" / "tritonserver"
    version = sysconfig.get_config_var("py_version_short")
    backends = work / "backends"
    shutil.copytree(dist / "backends", backends, dirs_exist_ok=True)
    shutil.copy(
        dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        backends / "python" / "triton_python_backend_stub",
    )
    libs = [
        str(site.parent.parent.parent / "lib"),
        str(site / "nvidia_pytriton.libs"),
        sysconfig.get_config_var("LIBDIR"),
    ]
    ports = dict(zip(("http", "grpc", "metrics"), free_ports(3), strict=True))
    cmd = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--http-port={ports['http']}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-port={ports['metrics']}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--exit-on-error=true",
        "--log-verbose=0",
        "--exit-timeout-secs=5",
    ]
    env = {
        "LD_LIBRARY_PATH": ":".join(libs),
        "PYTHONPATH": str(site),
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
    }
    server = spawn(cmd, "tritonserver", env)
    if server.wait_for(r"Started HTTPService", timeout=120) is None:
        output = server.output()
        server.stop()
        raise TritonUnavailable(f"tritonserver did not start:\n{output[-3000:]}")
    server.ports = ports
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the log line comes before the models are ready
        try:
            with urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=2):
                return server
        except OSError:
            if server.proc.poll() is not None:
                break
            time.sleep(0.2)
    output = server.output()
    server.stop()
    raise TritonUnavailable(f"tritonserver did not become ready:\n{output[-3000:]}")
