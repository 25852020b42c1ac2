"""Locust scenarios for the tenfold gateway: people using the app, not a fixed rate.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080              # web UI
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --headless -u 20 -r 5 -t 1m
    locust -f loadtest/locustfile.py --host ... --headless --tags feed           # feed only
    locust -f loadtest/locustfile.py,loadtest/surge.py --host ... --headless    # the surge

- ``FeedUser`` (weight 9): opens the app (page 1 of the feed), scrolls through next
  pages sending what it was shown as ``seen``, reopens the app now and then, and
  sometimes tries an effect on one of its photos.
- ``EffectsUser`` (weight 1): uploads real photos (loadtest/photos) of several sizes to
  an effect and checks an image comes back.
- Tags: ``feed`` and ``effects`` pick one side (``--tags effects``); the weights give
  the mixed traffic by default. ``loadtest/surge.py`` adds the load shape of the surge
  story (a steady base, a step to 10x, another 10x).

Answers are checked (a feed page has items, none already seen; an effect answers an
image), so a wrong answer counts as a failure, not only a bad status.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, events, tag, task

from loadtest.photos import uploads

DEVICES, NETWORKS = ("android", "ios", "web"), ("wifi", "5g", "4g")
#: users the default models know (tenfold models build: 50,000 by default)
KNOWN_USERS = 50_000


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("tenfold")
    group.add_argument("--api-key", default="", help="sent as a Bearer token (if set)")
    group.add_argument("--effect", default="cartoon", help="effect the users apply")
    group.add_argument("--effect-size", type=int, default=256, help="effect output size")
    group.add_argument("--page-size", type=int, default=20, help="feed items per page")
    group.add_argument("--max-pages", type=int, default=5, help="pages before reopening")


class _TenfoldUser(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        self.auth = {"authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.photos = [body for _, body in uploads()]

    def apply_effect(self, name: str) -> None:
        options = self.options
        with self.client.post(
            f"/v1/effects/{options.effect}?size={options.effect_size}",
            data=random.choice(self.photos),
            headers={"content-type": "image/jpeg", **self.auth},
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200 and not resp.headers.get("content-type", "").startswith(
                "image/"
            ):
                resp.failure(f"effect answered {resp.headers.get('content-type')}, not an image")


class FeedUser(_TenfoldUser):
    weight = 9
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        super().on_start()
        # log-uniform: a few users are very active, most are occasional
        self.user_id = int(KNOWN_USERS ** random.random()) - 1
        self.feed_context = {
            "hour": random.randrange(24),
            "device": random.choice(DEVICES),
            "network": random.choice(NETWORKS),
        }
        self.seen, self.pages = [], 0  # the first page is the app opening

    def _page(self, name: str) -> None:
        body = {
            "user_id": self.user_id,
            "count": self.options.page_size,
            "context": self.feed_context,
            "seen": self.seen,
        }
        with self.client.post(
            "/v1/feed", json=body, headers=self.auth, name=name, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                return  # counted as a failure by its status
            items = [item["item_id"] for item in resp.json()["items"]]
            if not items:
                resp.failure("empty feed page")
            elif set(items) & set(self.seen):
                resp.failure("the feed showed an item the user had already seen")
            self.seen += items
            self.pages += 1

    @tag("feed")
    @task(2)
    def open_app(self) -> None:
        self.seen, self.pages = [], 0
        self._page("/v1/feed [open app]")

    @tag("feed")
    @task(10)
    def next_page(self) -> None:
        if self.pages == 0 or self.pages >= self.options.max_pages:
            self.open_app()
        else:
            self._page("/v1/feed [next page]")

    @tag("feed", "effects")
    @task(1)
    def try_effect(self) -> None:
        self.client.get("/v1/effects", headers=self.auth, name="/v1/effects [list]")
        self.apply_effect("/v1/effects [from feed]")


class EffectsUser(_TenfoldUser):
    weight = 1
    wait_time = between(1.0, 3.0)

    @tag("effects")
    @task
    def upload(self) -> None:
        self.apply_effect("/v1/effects [upload]")
