"""A real Prometheus for tests (Debian's ``prometheus`` package, `make prometheus`):
started on a free loopback port with a generated config, scraping every second."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

from servicekit.launcher import free_port
from tests.gateway.conftest import wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = "Debian's prometheus is not installed: `make prometheus` (apt-get) adds it"


@contextmanager
def running_prometheus(
    workdir: Path, scrape_configs: Sequence[dict], rule_files: Sequence[Path] = ()
) -> Iterator[str]:
    """Prometheus scraping ``scrape_configs`` every second (rules evaluated every
    second too); yields its base URL."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in rule_files],
                "scrape_configs": list(scrape_configs),
            }
        )
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(ready, "Prometheus to be ready", 30)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def query(url: str, expr: str) -> list[dict]:
    """An instant query's result; AssertionError with Prometheus's message on error."""
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]
