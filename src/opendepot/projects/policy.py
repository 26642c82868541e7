"""Project settings as the domain sees them: hardware sizes, cache policy and trust policy checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opendepot.ci import PROVIDERS
from opendepot.errors import InvalidArgument

from . import hardware

GIB = 1 << 30
DEFAULT_KEEP_GB = 50
DEFAULT_KEEP_DAYS = 14
MAX_KEEP_GB = 1 << 20
MAX_KEEP_DAYS = 36500

# Hardware sizes as stored ("<cpus>x<memory GB>", projects/hardware.py); the API's HARDWARE_UNSPECIFIED
# means the default, 16x32.
HARDWARE_SIZES = tuple(str(h) for h in hardware.ALL)
DEFAULT_HARDWARE = str(hardware.DEFAULT)


@dataclass(frozen=True, slots=True)
class CachePolicyInput:
    """What the caller sent; None means absent. keep_gb wins when it is positive (spec §4.1)."""

    keep_bytes: int | None
    keep_gb: int
    keep_days: int


@dataclass(frozen=True, slots=True)
class CacheSetting:
    keep_bytes: int
    keep_days: int

    @property
    def keep_gb(self) -> int:
        return self.keep_bytes // GIB


DEFAULT_CACHE = CacheSetting(keep_bytes=DEFAULT_KEEP_GB * GIB, keep_days=DEFAULT_KEEP_DAYS)


def resolve_cache(policy: CachePolicyInput | None, current: CacheSetting) -> CacheSetting:
    """A size of zero keeps the current size: a caller that only changes keep_days sends no size."""
    if policy is None:
        return current
    if policy.keep_gb < 0:
        raise InvalidArgument("cache_policy.keep_gb", "must not be negative")
    if policy.keep_gb > MAX_KEEP_GB:
        raise InvalidArgument("cache_policy.keep_gb", f"must be at most {MAX_KEEP_GB}")
    if policy.keep_bytes is not None and policy.keep_bytes < 0:
        raise InvalidArgument("cache_policy.keep_bytes", "must not be negative")
    if policy.keep_bytes is not None and policy.keep_bytes > MAX_KEEP_GB * GIB:
        raise InvalidArgument("cache_policy.keep_bytes", f"must be at most {MAX_KEEP_GB} GiB")
    if policy.keep_days < 0:
        raise InvalidArgument("cache_policy.keep_days", "must not be negative (0 means no limit)")
    if policy.keep_days > MAX_KEEP_DAYS:
        raise InvalidArgument("cache_policy.keep_days", f"must be at most {MAX_KEEP_DAYS}")
    if policy.keep_gb > 0:
        keep_bytes = policy.keep_gb * GIB
    elif policy.keep_bytes:
        keep_bytes = policy.keep_bytes
    else:
        keep_bytes = current.keep_bytes
    return CacheSetting(keep_bytes=keep_bytes, keep_days=policy.keep_days)


def check_hardware(hardware: str | None) -> str | None:
    if hardware is not None and hardware not in HARDWARE_SIZES:
        raise InvalidArgument("hardware", "is not a known hardware size")
    return hardware


def check_region(region_id: str, regions: tuple[str, ...]) -> str:
    if region_id not in regions:
        raise InvalidArgument("region_id", f"must be one of {', '.join(regions)}")
    return region_id


TRUST_PROVIDERS = tuple(PROVIDERS)


def check_trust_policy(provider: str | None, fields: dict[str, str]) -> dict[str, Any]:
    """Validates one provider's fields (its module in `opendepot/ci/`) and returns the claims to store."""
    module = PROVIDERS.get(provider or "")
    if module is None:
        raise InvalidArgument("provider", "one of github, buildkite, circleci or gitlab is required")
    return dict(module.validate(fields))
