"""One internal build status, mapped to the two APIs that describe builds (spec §7.7). Stored as its string
value; a StrEnum compares equal to the stored string."""

from __future__ import annotations

from enum import StrEnum


class BuildStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    ERROR = "error"
    CANCELED = "canceled"


FINISHED = frozenset({BuildStatus.SUCCESS, BuildStatus.FAILED, BuildStatus.ERROR, BuildStatus.CANCELED})

# The names the handlers and services use.
RUNNING, SUCCESS, FAILED, ERROR, CANCELED = (
    BuildStatus.RUNNING,
    BuildStatus.SUCCESS,
    BuildStatus.FAILED,
    BuildStatus.ERROR,
    BuildStatus.CANCELED,
)
