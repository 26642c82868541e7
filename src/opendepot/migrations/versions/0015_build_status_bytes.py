"""Builds keep a running total of the status reports the CLI sent: the per-build bound is checked without
summing every earlier report on each message

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("builds", sa.Column("status_bytes", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(
        "UPDATE builds SET status_bytes = COALESCE((SELECT SUM(LENGTH(payload)) FROM status_reports"
        " WHERE status_reports.build_id = builds.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("status_bytes")
