"""Errors a user can fix. Jobs print them as one line; everything else is a bug and keeps its trace.

It must not import anything heavy (every module, pure ones included, imports it).
"""
from __future__ import annotations


class UserError(Exception):
    """Base class for mistakes in inputs or settings, reported without a traceback."""


class DataError(UserError):
    """Malformed input data. Names the source file, the row number and the field when known."""

    def __init__(self, message: str, source: str = "", row: int | None = None, field: str = ""):
        self.source, self.row, self.field, self.reason_message = source, row, field, message
        where = ", ".join(p for p in (
            source or "", f"row {row}" if row is not None else "", f"field '{field}'" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class ExportCheckError(UserError):
    """An exported checkpoint gives a consumer a different reward than ray_rm (see model/export_check.py)."""


def lookup(registry: dict, name: str, setting: str):
    """``registry[name]``; an unknown name is a UserError naming the setting and every registered name (the one
    lookup of every registry: losses, heads)."""
    try:
        return registry[name]
    except KeyError:
        raise UserError(f"{setting} '{name}' is unknown; choose one of {', '.join(registry)}") from None
