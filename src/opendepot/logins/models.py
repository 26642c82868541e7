from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class LoginRequest(Base):
    """A `depot login` waiting for approval. No token is kept: it is made when FinishLogin hands it over,
    once. The id is the secret FinishLogin redeems and never leaves the CLI; the approval URL carries
    approval_id, which approves but cannot redeem."""

    __tablename__ = "login_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    approval_id: Mapped[str | None] = mapped_column(String(64), unique=True, index=True, nullable=True)
    # Shown on the approval page with the origin and time, for the approver to confirm.
    user_code: Mapped[str | None] = mapped_column(String(9), nullable=True)
    # The client address and user agent StartLogin came from.
    origin: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The client address alone, to bound the requests one address may have waiting.
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    approved_organization_id: Mapped[str | None] = mapped_column(String(10), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Who approved: an organization token's id, or "admin" for `opendepot login approve`.
    approved_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
