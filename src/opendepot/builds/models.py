from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from opendepot.store.base import Base, UTCDateTime


class Build(Base):
    """One build, whichever API created it (cli.v1, build.v1); core.v1 reads the same rows."""

    __tablename__ = "builds"
    __table_args__ = (
        Index("ix_builds_project_created", "project_id", "created_at", "id"),
        # The retention sweep's oldest finished builds.
        Index("ix_builds_finished", "finished_at"),
        # An organization's builds of the last minute (--max-builds-per-minute).
        Index("ix_builds_organization_created", "organization_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    organization_id: Mapped[str] = mapped_column(String(10))
    # running, success, failed, canceled (see builds/status.py for the API mappings).
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The BuildOptions as sent, for GetPullInfo and for listing.
    options: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Who created it: "<token kind>:<token id>", for a CI identity "oidc:<provider>:<subject>".
    started_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Set while the build is shared: the SHA-256 of the secret in its share link.
    share_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    # What its status reports (the CLI's status stream) hold, in bytes: the per-build bound's running total.
    status_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The size of its options as sent (JSON, up to 256 KiB): the history quota counts it.
    options_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # What its step rows hold (steps.stored_bytes), as they were written: the history quota counts it.
    steps_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Lease(Base):
    """A build's hold on its project's builder for one platform, renewed by heartbeats."""

    __tablename__ = "leases"
    __table_args__ = (
        UniqueConstraint("build_id", "platform"),
        Index("ix_leases_project_acquired", "project_id", "acquired_at"),
    )

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(String(10), index=True)
    platform: Mapped[str] = mapped_column(String(8))
    # The project's hardware size when the lease was taken: what the machine time is billed at.
    hardware: Mapped[str] = mapped_column(String(16), default="16x32")
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When a GetBuildKitConnection first found the builder running for it: machine time is billed from here,
    # not from acquired_at (a build waiting for a builder, past a cap or while one starts, uses none).
    served_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class StatusReport(Base):
    """A batch of BuildKit status the client reported (cli.v1 ReportStatusStream), kept as received
    (serialized moby.buildkit.v1.StatusResponse messages) for the steps view to read."""

    __tablename__ = "status_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class Step(Base):
    """One BuildKit vertex of a build, merged from every status update seen for it."""

    __tablename__ = "build_steps"
    __table_args__ = (
        UniqueConstraint("build_id", "digest"),
        Index("ix_build_steps_order", "build_id", "started_at"),
        # Finds a step's last real run in its project, to meter what a cache hit saved: one seek per name,
        # past the cached runs (a project rebuilt N times keeps N cached runs of each step).
        Index("ix_build_steps_real_runs", "project_id", "name", "cached", "started_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(10), default="")
    digest: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(Text)
    # When BuildKit says it started; until then, when it was first seen (so that steps still sort).
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_known: Mapped[bool] = mapped_column(default=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cached: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    has_logs: Mapped[bool] = mapped_column(default=False)
    # For a cached step: how long its last real run in this project took (metered once, when cached).
    saved_seconds: Mapped[float | None] = mapped_column(nullable=True)


class LogLine(Base):
    """One line a step printed, in arrival order (the id)."""

    __tablename__ = "build_log_lines"
    __table_args__ = (Index("ix_build_log_lines_step", "build_id", "digest", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(200))
    stream: Mapped[int] = mapped_column(Integer)
    logged_at: Mapped[datetime] = mapped_column(UTCDateTime())
    text: Mapped[str] = mapped_column(Text)


class LogVolume(Base):
    """Bytes of log kept per build, for the cap."""

    __tablename__ = "build_log_volume"

    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(default=False)
