"""Hardening: login requests get an approval handle apart from their secret, a user code and an origin;
build tokens of builds that already ended expire now.

Revision ID: 0011
Revises: 0012
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("login_requests") as batch:
        batch.add_column(sa.Column("approval_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("user_code", sa.String(length=9), nullable=True))
        batch.add_column(sa.Column("origin", sa.String(length=255), nullable=True))
        batch.create_index(batch.f("ix_login_requests_approval_id"), ["approval_id"], unique=True)
    ended = sa.text(
        "UPDATE tokens SET expires_at = :now WHERE kind = 'build' AND expires_at IS NULL AND build_id IN "
        "(SELECT id FROM builds WHERE status IN ('success', 'failed', 'error', 'canceled'))"
    )
    op.get_bind().execute(ended, {"now": datetime.now(UTC)})


def downgrade() -> None:
    with op.batch_alter_table("login_requests") as batch:
        batch.drop_index(batch.f("ix_login_requests_approval_id"))
        batch.drop_column("origin")
        batch.drop_column("user_code")
        batch.drop_column("approval_id")
