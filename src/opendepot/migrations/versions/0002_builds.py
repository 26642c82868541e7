"""builds, leases, machines, build tokens

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machines",
        sa.Column("project_id", sa.String(length=10), nullable=False),
        sa.Column("platform", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "platform", name=op.f("pk_machines")),
    )
    op.create_table(
        "builds",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("project_id", sa.String(length=10), nullable=False),
        sa.Column("organization_id", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_builds_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_builds")),
    )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.create_index("ix_builds_project_created", ["project_id", "created_at", "id"], unique=False)

    op.create_table(
        "leases",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("build_id", sa.String(length=10), nullable=False),
        sa.Column("project_id", sa.String(length=10), nullable=False),
        sa.Column("platform", sa.String(length=8), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["build_id"], ["builds.id"], name=op.f("fk_leases_build_id_builds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
        sa.UniqueConstraint("build_id", "platform", name=op.f("uq_leases_build_id")),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_leases_build_id"), ["build_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_leases_project_id"), ["project_id"], unique=False)

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("build_id", sa.String(length=10), nullable=True))
        batch_op.create_index(batch_op.f("ix_tokens_build_id"), ["build_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_tokens_build_id_builds"), "builds", ["build_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tokens_build_id_builds"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_tokens_build_id"))
        batch_op.drop_column("build_id")

    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_leases_project_id"))
        batch_op.drop_index(batch_op.f("ix_leases_build_id"))

    op.drop_table("leases")
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_index("ix_builds_project_created")

    op.drop_table("builds")
    op.drop_table("machines")
