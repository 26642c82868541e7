"""metered savings

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("build_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project_id", sa.String(length=10), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("saved_seconds", sa.Double(), nullable=True))
        batch_op.create_index("ix_build_steps_history", ["project_id", "name", "started_at"], unique=False)

    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index("ix_leases_project_acquired", ["project_id", "acquired_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_index("ix_leases_project_acquired")

    with op.batch_alter_table("build_steps", schema=None) as batch_op:
        batch_op.drop_index("ix_build_steps_history")
        batch_op.drop_column("saved_seconds")
        batch_op.drop_column("project_id")
