from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class SingularLease(Base):
    """Which node runs a duty that must run once among all `opendepot serve` nodes on one store (the builder
    reconciler with its lease reaper and usage sampling, registry GC, metrics gauges). The holder renews it;
    once `expires_at` passes, any node may take it."""

    __tablename__ = "singular_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
