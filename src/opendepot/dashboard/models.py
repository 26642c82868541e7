from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class DashboardSession(Base):
    """A signed-in browser. The cookie holds a random secret; only its SHA-256 is kept. The session acts
    with the token it was opened with, so deleting that token ends every session opened with it (the
    foreign key, and a join on every request)."""

    __tablename__ = "dashboard_sessions"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    # Sent with every change (form field or header) and compared with this value.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
