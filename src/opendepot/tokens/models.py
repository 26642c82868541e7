from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class Token(Base):
    """An API token. Only the SHA-256 of its secret is kept; the secret is shown once, at creation."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True, nullable=True
    )
    # Set for build tokens (the one build they reach) and the pull tokens they ask for (they expire with it).
    build_id: Mapped[str | None] = mapped_column(
        ForeignKey("builds.id", ondelete="CASCADE"), index=True, nullable=True
    )
    description: Mapped[str] = mapped_column(String(255))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set for pull tokens, which expire; the others last until deleted.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
