"""The project's one user-error base class, and the cap on values echoed in messages.

Every error that means "the user's input cannot be used" (a config, a search-space file, a data
set, a checkpoint, a tracking store, a command-line flag) derives from :class:`UserError`; the
CLI prints such an error as one line and exits 2. Anything else is a bug and keeps its
traceback. Subclasses keep their historical builtin base as well (``ConfigError`` is still a
``ValueError``, ``DatasetNotFoundError`` a ``FileNotFoundError``), so callers that catch those
keep working.
"""

from __future__ import annotations

import os
import re

__all__ = ["UserError", "UsageError", "short", "last_line", "mask_uri", "mask_text", "credentials_to_env"]

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
        text = mask_text(repr(value))
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by its type
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def last_line(error) -> str:
    """The last non-empty line of an error's text, colour codes removed: the exception itself, not
    the wrapper lines Ray puts above it (a trial's error as Tune reports it)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(error).splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else "the trial raised an error"


# -- credentials: never printed, logged or stored -----------------------------------------------
# scheme://userinfo@ : the user info of any URI in a text
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/@\s'\"]+)@")


def _masked(info: str) -> str:
    user, has_password, _ = info.partition(":")
    # user:password shows the user; a lone user info may be a token, so none of it shows
    return f"{user}:***" if has_password else "***"


def mask_uri(uri: str) -> str:
    """``http://user:secret@host:5000`` -> ``http://user:***@host:5000``; ``https://token@host`` ->
    ``https://***@host``: the form of a URI that may be printed, logged or stored."""
    return mask_text(uri)


def mask_text(text: str) -> str:
    """``text`` with the user info of every URI in it masked as :func:`mask_uri` does."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{_masked(m['info'])}@", text)


def credentials_to_env(uri: str) -> str:
    """An ``http(s)`` tracking URI with user info: the credentials move to
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow's REST client sends them
    as basic auth) and the URI without them is returned, so that no plan, log line, artifact,
    config or pickled callback holds them."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit(parts._replace(netloc=host))
