from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class Image(Base):
    """One tag in a project's repository, as the registry's notifications reported it."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "tag"),
        Index("ix_images_listing", "project_id", "pushed_at", "tag"),
        Index("ix_images_digest", "project_id", "digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(100))
    media_type: Mapped[str] = mapped_column(String(200))
    # Config plus layers (for an index: over its manifests, each blob once).
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    pushed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Maintenance(Base):
    """One row: when garbage collection was last asked for and last done. API workers ask (after a
    delete); the supervisor runs it once the registry is idle."""

    __tablename__ = "registry_maintenance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gc_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    gc_finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @property
    def collection_waiting(self) -> bool:
        """Asked for and not done since."""
        return self.gc_requested_at is not None and (
            self.gc_finished_at is None or self.gc_finished_at < self.gc_requested_at
        )
