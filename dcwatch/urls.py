"""URL helpers shared by every service: one place that keeps credentials out of logs and pages.

A URL may carry credentials (``http://user:pass@prom:9090``); the services use them, but
everything they log, label or render goes through :func:`redact_url` (one URL) or
:func:`redact_text` (a message that may quote URLs, e.g. an exception's text).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

# scheme://userinfo@ where userinfo has no "/", "@" or whitespace (RFC 3986 authority).
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]*@")
# the same before a scheme-less ``user:pass@host:port`` (a target as typed)
_BARE_USERINFO = re.compile(r"^[^/?#@\s]*@")


def redact_url(url: str) -> str:
    """``url`` without its userinfo: ``http://user:pass@prom:9090/x`` -> ``http://prom:9090/x``.

    Path, query and fragment are kept; a string that does not parse as a URL loses everything
    up to the last ``@`` of its authority anyway, so a malformed URL cannot leak a password.
    """
    if "://" not in url:
        return _BARE_USERINFO.sub("", url)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 literal
        return _USERINFO.sub(r"\1", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every ``scheme://user:pass@host`` in it removed."""
    return _USERINFO.sub(r"\1", text)


def url_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Split the userinfo off ``url``: ``(url without it, (user, password))``, or ``(url, None)``.

    Percent-escapes in user and password are decoded (``p%40ss`` is ``p@ss``).
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    return redact_url(url), (unquote(parts.username or ""), unquote(parts.password or ""))


def redacted_repr(obj: Any) -> str:
    """A dataclass's repr with URL credentials removed from its string fields: for configs
    holding URLs that may carry a password (use as ``__repr__``; the class sets ``repr=False``).
    """
    shown = []
    for f in dataclasses.fields(obj):
        if f.repr:
            value = getattr(obj, f.name)
            if isinstance(value, str):
                value = redact_text(value)
            elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                value = tuple(redact_text(v) for v in value)
            shown.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"
