"""The store: engine and sessions. Domain packages hold their own models and queries; `opendepot.migrations`
holds the schema's history."""

from .base import Base, UTCDateTime
from .engine import Store

__all__ = ["Base", "Store", "UTCDateTime"]
