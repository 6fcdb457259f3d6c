"""Optional per-row fields shared by the non-pair row normalizers (``stepwise``, ``ratings``).

What this module is for: reading ``subset`` and ``id`` the same way in every row form, with the same
``DataError`` wording as ``formats``. It must stay pure Python (no Ray, no torch) and hold no row form.
"""
from __future__ import annotations

from ray_rm.data.formats import _describe, RowLocator


def optional_string(where: RowLocator, raw: dict, key: str) -> str | None:
    """``raw[key]`` when it is a string, None when absent or null; anything else is a DataError."""
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise where.error(key, f"expected a string, got {_describe(value)}")
    return value


def row_id(where: RowLocator, raw: dict) -> str | None:
    """The row's own ``id`` (a string or an integer, kept as a string), None when absent or null."""
    value = raw.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise where.error("id", f"expected a string or an integer, got {_describe(value)}")
    return str(value)
