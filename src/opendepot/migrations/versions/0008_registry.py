"""registry images, pull tokens

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=10), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("media_type", sa.String(length=200), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_images_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("project_id", "tag", name=op.f("uq_images_project_id")),
    )
    op.create_index("ix_images_listing", "images", ["project_id", "pushed_at", "tag"], unique=False)
    op.create_index("ix_images_digest", "images", ["project_id", "digest"], unique=False)
    op.create_table(
        "registry_maintenance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gc_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gc_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_maintenance")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
    op.drop_table("registry_maintenance")
    op.drop_index("ix_images_digest", table_name="images")
    op.drop_index("ix_images_listing", table_name="images")
    op.drop_table("images")
