"""One output channel. Every module logs to the "persona" logger; the CLI gives it one concise format on
stderr. stdout is left for what a command returns (verify's findings, a dry run's listing, tables), and
tqdm draws progress bars."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("persona")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"[persona] {text}" if record.levelno < logging.WARNING else f"[persona] {record.levelname}: {text}"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message is logged (tests and tools swap it)."""
    stream = property(lambda self: sys.stderr, lambda self, value: None)


def setup(level: int = logging.INFO) -> None:
    """Idempotent: the CLI, a test or a script may call it more than once."""
    if not any(getattr(h, "persona", False) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(_Format("%(message)s"))
        handler.persona = True
        log.addHandler(handler)
        log.propagate = False  # one line per message, whatever the root logger is set up to do
    log.setLevel(level)


setup()  # persona is an application: its messages read the same from the CLI, a script or a test
