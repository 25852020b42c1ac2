"""Feedback events and real-time user state (Redis).

The gateway validates events and appends them to a Redis stream (``store``); the stream
processor (``processor``, ``tenfold events process``) turns them into per-user state
and per-item counters; the feed reads the state back in one round trip. The key layout
both sides share is in ``keys``.
"""
