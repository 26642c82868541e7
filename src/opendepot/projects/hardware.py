"""A builder's hardware size, "<cpus>x<memory GB>" as projects store it and the API names it."""

from __future__ import annotations

from dataclasses import dataclass

# The CPUs of the default size: a minute on it bills as one minute (usage/service.py).
BASE_CPUS = 16


@dataclass(frozen=True, slots=True)
class Hardware:
    cpus: int
    memory_gb: int

    @classmethod
    def parse(cls, size: str) -> Hardware:
        """ "16x32" -> Hardware(cpus=16, memory_gb=32); ValueError for anything else."""
        cpus, separator, memory = size.partition("x")
        if not separator:
            raise ValueError(f"not a hardware size: {size!r}")
        return cls(int(cpus), int(memory))

    @property
    def billing_weight(self) -> float:
        """What one minute on this size counts as, against the default size."""
        return self.cpus / BASE_CPUS

    def __str__(self) -> str:
        return f"{self.cpus}x{self.memory_gb}"


DEFAULT = Hardware(16, 32)
ALL = (
    DEFAULT,
    Hardware(4, 4),
    Hardware(8, 8),
    Hardware(8, 16),
    Hardware(32, 64),
    Hardware(64, 128),
    Hardware(96, 192),
    Hardware(192, 384),
)
