"""Start the stream processor as a child process (``python -m tenfold events process``);
its metrics port comes from its ready file. The public way for tests and the local
stack to run one."""

from __future__ import annotations

import sys

from servicekit.launcher import ServiceProcess, launch


def start_processor(redis_url: str, consumer: str, *args: str) -> ServiceProcess:
    """Start a processor in the consumer group as ``consumer``; wait until ready."""
    cmd = [sys.executable, "-m", "tenfold", "events", "process", "--redis", redis_url]
    cmd += ["--consumer", consumer, *args]
    return launch(cmd, f"events-{consumer}")
