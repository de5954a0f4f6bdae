"""The project's one user-error base class, and the cap on values echoed in messages.

Every error that means "the user's input cannot be used" (a config, a search-space file, a data
set, a checkpoint, a tracking store, a command-line flag) derives from :class:`UserError`; the
CLI prints such an error as one line and exits 2. Anything else is a bug and keeps its
traceback. Subclasses keep their historical builtin base as well (``ConfigError`` is still a
``ValueError``, ``DatasetNotFoundError`` a ``FileNotFoundError``), so callers that catch those
keep working.
"""

from __future__ import annotations

__all__ = ["UserError", "UsageError", "short"]

# an echoed value longer than this is cut (an alias-expanded list, a pasted file)
MAX_ECHO = 200


class UserError(Exception):
    """Bad input from the user: the message names the file, key and value and what is accepted."""


class UsageError(UserError, ValueError):
    """A command-line flag or argument that cannot be used."""


def short(value, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters with a note of the full length, so that no
    error message echoes a huge value (a YAML alias expansion, a megabyte string)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by its type
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
