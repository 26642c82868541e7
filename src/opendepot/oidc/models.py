from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class TokenUse(Base):
    """The first use of a CI token (by issuer and jti), so that a token seen again after the replay window
    is refused on every worker. Rows go once the token has expired."""

    __tablename__ = "oidc_token_uses"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_used_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
