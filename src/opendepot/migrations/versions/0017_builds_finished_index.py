"""Builds are found by when they finished: the retention sweep (--build-retention-days) deletes the oldest

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_builds_finished", "builds", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_builds_finished", table_name="builds")
