"""The store: engine, sessions and migrations. Domain packages hold their own models and queries."""

from .base import Base, UTCDateTime
from .engine import Store

__all__ = ["Base", "Store", "UTCDateTime"]
