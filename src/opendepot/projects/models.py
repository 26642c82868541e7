from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class Project(Base):
    __tablename__ = "projects"
    # Keyset pagination walks (organization, created_at, id).
    __table_args__ = (Index("ix_projects_org_created", "organization_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    region_id: Mapped[str] = mapped_column(String(64))
    # One stored value for the cache size; keep_gb and keep_bytes are both derived from it.
    cache_keep_bytes: Mapped[int] = mapped_column(BigInteger)
    cache_keep_days: Mapped[int] = mapped_column(Integer)
    hardware: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # BuildKit entitlements its builders may grant (comma-separated; an operator's decision, issue 13).
    allowed_entitlements: Mapped[str] = mapped_column(String(255), default="", server_default="")


class TrustPolicy(Base):
    __tablename__ = "trust_policies"

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    # The provider's fields, e.g. {"repository_owner": ..., "repository": ...} for GitHub.
    claims: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
