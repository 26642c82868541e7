"""Leases are billed from when the build got its builder (served_at), not from when it asked for one: a build
waiting past a builder cap uses no machine. Existing leases were billed from acquired_at and keep that.

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leases", sa.Column("served_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE leases SET served_at = acquired_at")


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("served_at")
