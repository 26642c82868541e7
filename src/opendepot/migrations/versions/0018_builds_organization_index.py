"""Builds are counted by organization and creation time: CreateBuild's rate bound (--max-builds-per-minute)

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_builds_organization_created", "builds", ["organization_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_builds_organization_created", table_name="builds")
