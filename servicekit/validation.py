"""The one rendering of a pydantic ``ValidationError`` as a message that names the
field: ``count: Input should be less than or equal to 200; context.hour: ...``."""

from __future__ import annotations

from pydantic import ValidationError


def validation_message(exc: ValidationError, root: str = "?", first_only: bool = False) -> str:
    """``root`` names an error without a location (the whole document)."""
    errors = exc.errors()[:1] if first_only else exc.errors()
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or root}: {err['msg']}" for err in errors
    )
