"""Build hook: generate the protobuf/gRPC Python code from protos/**/*.proto.

Everything else about the package lives in pyproject.toml. The generated modules are
not committed; they are produced here, by every build (wheel, sdist, editable
install), with the grpcio-tools pinned in [build-system].requires, so the code always
matches the .proto sources.
"""

from __future__ import annotations

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


def generate_protos() -> None:
    from grpc_tools import protoc  # build-time dependency only

    sources = sorted(str(p) for p in (ROOT / "protos").rglob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}", f"--pyi_out={ROOT}"]
    grpc_sources = [s for s in sources if "/protos/kserve/" not in s]
    if grpc_sources:
        rc = protoc.main([*args, f"--grpc_python_out={ROOT}", *grpc_sources])
        if rc != 0:
            raise SystemExit(f"protoc failed on {grpc_sources}")
    kserve = [s for s in sources if "/protos/kserve/" in s]
    if protoc.main([*args, *kserve]) != 0:
        raise SystemExit(f"protoc failed on {kserve}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


if __name__ == "__main__":  # setuptools runs this file as __main__
    setup(cmdclass={"build_py": BuildPyWithProtos})
