"""One JSON object per log line, on stderr: ts, level, logger, msg (or an RPC's own fields), and the build
id whenever the line concerns one build — from the record (`extra={"build_id": ...}`) or from the context
the line is logged in (`current_build`: set for an RPC made with a build token, and for each gateway
connection)."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

current_build: contextvars.ContextVar[str | None] = contextvars.ContextVar("opendepot_build", default=None)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["msg"] = record.getMessage()
        build_id = getattr(record, "build_id", None) or current_build.get()
        if build_id and "build_id" not in line:
            line["build_id"] = build_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("opendepot")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
