"""One output channel. Every module logs to the "persona" logger; the CLI gives it one concise format on
stderr. stdout is left for what a command returns (verify's findings, a dry run's listing, tables), and
tqdm draws progress bars."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

from .errors import redact

log = logging.getLogger("persona")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))  # a server's API key never reaches the console
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


# ------------------------------------------------------------------------------ other libraries' output

_ROUTED = "persona_route"        # marks the handlers route_library_logs adds, so a second call replaces them
_show_library_output = True      # until a command routes them, libraries print as they always do
_library_log: Path | None = None  # the file route_library_logs sends them to (None: shown on stderr)


def show_library_output() -> bool:
    """Whether vLLM may draw its own progress bars and Ray may forward its workers' output: true with
    --verbose, or when no command routed the libraries' output (a script, a test)."""
    return _show_library_output


def route_library_logs(path: Path | None) -> None:
    """Send vLLM's log lines, Python warnings and torch / transformers log lines to the file `path`
    (appended), or show them on stderr when `path` is None (--verbose). Call before vLLM starts an
    engine: vLLM applies its own logging config (a handler on stdout) at engine start unless
    VLLM_CONFIGURE_LOGGING=0, so that is set here, except when the user set up vLLM's logging
    (VLLM_LOGGING_CONFIG_PATH, or VLLM_CONFIGURE_LOGGING=1)."""
    global _show_library_output, _library_log
    _show_library_output, _library_log = path is None, path
    handler = _handler(path)
    if not os.environ.get("VLLM_LOGGING_CONFIG_PATH") and os.environ.get("VLLM_CONFIGURE_LOGGING", "0") == "0":
        os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
        _route("vllm", handler, os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper(), replace_all=True)
    if path is None:  # Python warnings and torch / transformers print on stderr by themselves
        logging.captureWarnings(False)
        for name in ("py.warnings", "transformers", *(n for n in logging.root.manager.loggerDict if n.startswith("torch"))):
            _route(name, None)
        return
    os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"  # torch's C++ warnings (read when torch loads)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger
    _route("py.warnings", handler, logging.WARNING)
    if importlib.util.find_spec("torch"):
        import torch  # noqa: F401  (torch gives its loggers stderr handlers at import: replace them now)
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if (name == "torch" or name.startswith("torch.")) and getattr(logger, "handlers", None):
                _route(name, handler, replace_all=True)
    if importlib.util.find_spec("transformers"):
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_default_handler()
        _route("transformers", handler, logging.WARNING)


@contextlib.contextmanager
def library_stderr():
    """Inside: what a library writes to sys.stderr by itself (the tqdm bars transformers draws while it
    converts a GGUF and writes the shards) goes to the file route_library_logs chose, or stays on stderr
    when the libraries' output is shown. persona's own lines logged inside go there too: log them outside."""
    if _library_log is None:
        yield
        return
    _library_log.parent.mkdir(parents=True, exist_ok=True)
    with open(_library_log, "a", encoding="utf-8") as file, contextlib.redirect_stderr(file):
        yield


def _handler(path: Path | None) -> logging.Handler:
    if path is None:
        handler = _Stderr()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s", "%m-%d %H:%M:%S"))
    setattr(handler, _ROUTED, True)
    return handler


def _route(name: str, handler: logging.Handler | None, level: int | str | None = None,
           replace_all: bool = False) -> None:
    """Give logger `name` only `handler` (None: only its own handlers, as before any routing)."""
    logger = logging.getLogger(name)
    for old in list(logger.handlers):
        if replace_all or getattr(old, _ROUTED, False):
            logger.removeHandler(old)
            old.close()
    if handler is None:
        logger.propagate = True  # to the root logger, which prints warnings on stderr
    else:
        logger.addHandler(handler)
        if level is not None:
            logger.setLevel(level)
        logger.propagate = False
