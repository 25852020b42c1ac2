"""Parse a JSON object from a request body, or say what was wrong with it."""

from __future__ import annotations

import orjson

from inference.protocol.errors import InvalidInput


def json_object(raw: bytes | memoryview, what: str = "body") -> dict:
    """Parse a JSON object or raise InvalidInput saying what was wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what}: malformed JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what}: must be a JSON object")
    return doc
