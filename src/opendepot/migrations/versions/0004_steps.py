"""build steps and logs

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "build_log_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("build_id", sa.String(length=10), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("stream", sa.Integer(), nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id"], ["builds.id"], name=op.f("fk_build_log_lines_build_id_builds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build_log_lines")),
    )
    with op.batch_alter_table("build_log_lines", schema=None) as batch_op:
        batch_op.create_index("ix_build_log_lines_step", ["build_id", "digest", "id"], unique=False)

    op.create_table(
        "build_log_volume",
        sa.Column("build_id", sa.String(length=10), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id"], ["builds.id"], name=op.f("fk_build_log_volume_build_id_builds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("build_id", name=op.f("pk_build_log_volume")),
    )
    op.create_table(
        "build_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("build_id", sa.String(length=10), nullable=False),
        sa.Column("digest", sa.String(length=200), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_known", sa.Boolean(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("has_logs", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id"], ["builds.id"], name=op.f("fk_build_steps_build_id_builds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build_steps")),
        sa.UniqueConstraint("build_id", "digest", name=op.f("uq_build_steps_build_id")),
    )
    with op.batch_alter_table("build_steps", schema=None) as batch_op:
        batch_op.create_index("ix_build_steps_order", ["build_id", "started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("build_steps", schema=None) as batch_op:
        batch_op.drop_index("ix_build_steps_order")

    op.drop_table("build_steps")
    op.drop_table("build_log_volume")
    with op.batch_alter_table("build_log_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_build_log_lines_step")

    op.drop_table("build_log_lines")
