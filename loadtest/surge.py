"""The surge story as a locust load shape: a steady base, a step to 10x, another 10x.

    locust -f loadtest/locustfile.py,loadtest/surge.py --host http://127.0.0.1:8080 \
        --headless [--surge-base 2] [--surge-stage 30]

Three stages of ``--surge-stage`` seconds each with ``base``, ``10 x base`` and
``100 x base`` users; each step is reached within a second (a surge does not ramp
politely). Scaled to this 2-core machine by default: 2 users (a few requests a
second), 20, then 200 users (well past one pod's feed capacity, so the gateway's
admission control sheds (429 from the gateway's limits, 503 + Retry-After from a pod
that cannot serve in time) and the autoscaler has something to do).
"""

from __future__ import annotations

from locust import LoadTestShape, events

from loadtest.shapes import stage_users


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("surge shape")
    group.add_argument("--surge-base", type=int, default=2, help="users in the base stage")
    group.add_argument("--surge-stage", type=float, default=30, help="seconds per stage")


class SurgeShape(LoadTestShape):
    def tick(self):
        options = self.runner.environment.parsed_options
        users = stage_users(self.get_run_time(), options.surge_base, options.surge_stage)
        if users is None:
            return None
        return users, max(1.0, float(users))
