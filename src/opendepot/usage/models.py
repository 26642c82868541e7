from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class CacheSample(Base):
    """A builder's layer-cache size as BuildKit reported it (`buildctl du`), at one moment."""

    __tablename__ = "cache_samples"
    __table_args__ = (Index("ix_cache_samples_project_time", "project_id", "sampled_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(10))
    platform: Mapped[str] = mapped_column(String(8))
    sampled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    bytes: Mapped[int] = mapped_column(BigInteger)
