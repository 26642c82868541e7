"""usage

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=10), nullable=False),
        sa.Column("platform", sa.String(length=8), nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_samples")),
    )
    with op.batch_alter_table("cache_samples", schema=None) as batch_op:
        batch_op.create_index("ix_cache_samples_project_time", ["project_id", "sampled_at"], unique=False)

    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("hardware", sa.String(length=16), nullable=False, server_default="16x32")
        )


def downgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("hardware")

    with op.batch_alter_table("cache_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_cache_samples_project_time")

    op.drop_table("cache_samples")
