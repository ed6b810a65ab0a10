"""One base for every failure the user can fix (bad recipe, missing file, refused publish, ...).

The CLI prints a PersonaError as one line and exits 2; any other exception is a bug in persona and
keeps its traceback. Lives in `generation` because both `generation` and `builder` raise it and
`generation` never imports `builder`.

Secrets (a server's API key, a Hub token handed to a client) are registered with `secret()` and replaced
by "***" where text leaves the process: a PersonaError's message and every log line. So is anything
shaped like a Hugging Face token, registered or not (a server may echo the Authorization header).
"""
from __future__ import annotations

import re

_SECRETS: set[str] = set()
TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{10,}")


def secret(value: str) -> str:
    """Register `value` as a secret of this process (redacted from now on); returns it."""
    if value:
        _SECRETS.add(value)
    return value


def redact(text: str) -> str:
    """`text` without any registered secret, nor anything shaped like a Hub token."""
    for value in sorted(_SECRETS, key=len, reverse=True):  # a longer secret may contain a shorter one
        text = text.replace(value, "***")
    return TOKEN_LIKE.sub("***", text)


class PersonaError(Exception):
    """A one-line, user-facing reason; `persona --debug` (or PERSONA_DEBUG=1) shows the traceback too."""

    def __str__(self) -> str:
        return redact(super().__str__())


# C0 and C1 controls (ESC starts a terminal escape sequence) and the bidi controls (U+202E reverses
# what follows), line and paragraph separators
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """TEXT with each control or bidi-control character written as its escape (\\x1b, \\u202e): text from
    outside (a Hub file name, a server's message) can neither recolour, clear nor reorder the terminal,
    nor break a one-line error in two."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
