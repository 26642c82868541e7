"""One internal build state, mapped to the two APIs that describe builds (spec §7.7)."""

from __future__ import annotations

RUNNING, SUCCESS, FAILED, ERROR, CANCELED = "running", "success", "failed", "error", "canceled"
FINISHED_STATES = (SUCCESS, FAILED, ERROR, CANCELED)
