"""The store: engine and sessions. Domain packages hold their own models and queries; `opendepot.migrations`
holds the schema's history."""

from .base import Base, UTCDateTime
from .engine import RowLookup, Store

__all__ = ["Base", "RowLookup", "Store", "UTCDateTime"]
