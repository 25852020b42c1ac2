"""Retry budget and token bucket: pure logic with the clock passed in."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` returns the wait (0 = ok)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst if burst > 0 else max(rate, 1.0)
        self.tokens = self.burst
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens if there are; otherwise the seconds until there will be."""
        self._refill(now)
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate if self.rate > 0 else float("inf")


class RetryBudget:
    """Retries may add at most ``ratio`` of the request rate, plus ``min_per_s``.

    Every request deposits ``ratio`` tokens; a retry (or hedge) spends one. The
    ``min_per_s`` floor keeps retries possible at low traffic."""

    def __init__(self, ratio: float, min_per_s: float, now: float, window_s: float = 10) -> None:
        self.ratio = ratio
        self.floor = TokenBucket(min_per_s, min_per_s * window_s, now) if min_per_s else None
        self.tokens = 0.0
        self.cap = max(10.0, ratio * 1000)

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self, now: float) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return self.floor is not None and self.floor.take(now) == 0.0
