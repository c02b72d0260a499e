"""The services' logs: one JSON object per line (or plain text), with the service, the session
and the party's role on every line that concerns a session, and no access line for a poll.

    {"time": "2026-12-01T19:49:59.120Z", "level": "INFO", "service": "model-owner",
     "logger": "data_appraisal.sessions", "message": "session 3f… running -> completed",
     "session": "3f…", "role": "model_owner", "state": "completed", "previous": "running"}

A record's ``extra`` fields become keys of its line. Uvicorn's access lines keep every request
that changes something or fails; successful reads (GET/HEAD 2xx-3xx: the polls of a session, the
health checks, metric scrapes) are dropped unless ``access_log="all"``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any, Literal

LogFormat = Literal["json", "text"]
AccessLog = Literal["changes", "all", "off"]

# the attributes every LogRecord has; anything else on a record came from ``extra``
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, service, logger, message, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line:
                line[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time service level logger: message key=value ...`` for a terminal."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s " + service + " %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and k != "service"
        ]
        return " ".join([text, *extras])


class ChangesOnly(logging.Filter):
    """Drop uvicorn's access line of a successful read (its args: client, method, path, version,
    status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            method, status = args[1], args[4]
            if method in ("GET", "HEAD") and isinstance(status, int) and status < 400:
                return False
        return True


def configure(
    service: str, *, level: str = "info", fmt: LogFormat = "json", access_log: AccessLog = "changes"
) -> None:
    """Send every logger (the project's, uvicorn's) to stderr in ``fmt``."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    access_filters = {"changes": ["changes_only"], "all": [], "off": []}[access_log]
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"changes_only": {"()": ChangesOnly}},
            "formatters": {"line": {"()": formatter, "service": service}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "line",
                    "stream": "ext://sys.stderr",
                },
                "access": {
                    "class": "logging.StreamHandler",
                    "formatter": "line",
                    "stream": "ext://sys.stderr",
                    "filters": access_filters,
                },
            },
            "root": {"handlers": ["stderr"], "level": level.upper()},
            "loggers": {
                "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
                "uvicorn.error": {"level": level.upper()},
                "uvicorn.access": {
                    "handlers": ["access"] if access_log != "off" else [],
                    "level": "INFO",
                    "propagate": False,
                },
            },
        }
    )
