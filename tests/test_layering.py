"""The import layering of docs/architecture.md ("Packages and layering"), checked with import-linter
against the contracts in pyproject.toml; and a check that a contract really fails when
the layering is broken (so a green run means something)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# import-linter and a fresh interpreter run as child processes
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
]


def _lint(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath or cwd)}
    return subprocess.run(
        [*LINT, "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_project_keeps_its_layering():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_framework_import_in_the_protocol_layer_breaks_the_contract(tmp_path):
    for package in ("inference/protocol", "protos"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "inference/__init__.py", tmp_path / "inference/__init__.py")
    config = tmp_path / "layers.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["inference", "protos"]\n'
        "include_external_packages = true\n"
        "[[tool.importlinter.contracts]]\n"
        'name = "protocol is framework-free"\ntype = "forbidden"\n'
        'source_modules = ["inference.protocol"]\nforbidden_modules = ["grpc", "aiohttp"]\n'
    )
    clean = _lint(tmp_path, "--config", str(config))
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (tmp_path / "inference/protocol/leak.py").write_text("import grpc\n")
    broken = _lint(tmp_path, "--config", str(config))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "inference.protocol.leak -> grpc" in broken.stdout


def test_a_pod_command_loads_no_offline_cli():
    """`tenfold inference ...` imports only the inference group, not the load tester's
    or the optimizer's (the CLI registers sub-command groups on demand)."""
    probe = (
        "import sys\n"
        "sys.argv = ['tenfold', 'inference', '--help']\n"
        "from tenfold.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "offline = {'optimizers', 'loadtest', 'gateway'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & offline))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "serve" in out.stdout  # the inference group's help was shown
