"""A step's last real run is found by one index seek per name, past the project's cached runs of it: the
history index gains `cached` (and `id`, the tie-break), and replaces the one without it.

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_build_steps_real_runs", "build_steps", ["project_id", "name", "cached", "started_at", "id"]
    )
    op.drop_index("ix_build_steps_history", table_name="build_steps")


def downgrade() -> None:
    op.create_index("ix_build_steps_history", "build_steps", ["project_id", "name", "started_at"])
    op.drop_index("ix_build_steps_real_runs", table_name="build_steps")
