from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class SealedSecret(Base):
    """One named secret: `public` (JSON: certificates, nothing secret) in clear, `sealed` the private parts
    (JSON) encrypted with the operator's secret key (AES-256-GCM, the name as associated data). Written once
    by the first node that needs it; never updated, deleted with what it belongs to."""

    __tablename__ = "sealed_secrets"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    public: Mapped[str] = mapped_column(Text())
    sealed: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
