"""The CPU architectures builders run: stored, leased and certified by these values."""

from __future__ import annotations

from enum import StrEnum


class Platform(StrEnum):
    AMD64 = "amd64"
    ARM64 = "arm64"


# What a client that names no platform gets.
DEFAULT = Platform.AMD64
