"""initial schema: organizations, projects, trust policies, tokens

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("name", name=op.f("uq_organizations_name")),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("organization_id", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("region_id", sa.String(length=64), nullable=False),
        sa.Column("cache_keep_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cache_keep_days", sa.Integer(), nullable=False),
        sa.Column("hardware", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_projects_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.create_index(
            "ix_projects_org_created", ["organization_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "tokens",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("organization_id", sa.String(length=10), nullable=False),
        sa.Column("project_id", sa.String(length=10), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_tokens_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_tokens_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_tokens_secret_hash")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tokens_project_id"), ["project_id"], unique=False)

    op.create_table(
        "trust_policies",
        sa.Column("id", sa.String(length=10), nullable=False),
        sa.Column("project_id", sa.String(length=10), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_trust_policies_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_policies")),
    )
    with op.batch_alter_table("trust_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trust_policies_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trust_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trust_policies_project_id"))

    op.drop_table("trust_policies")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokens_project_id"))
        batch_op.drop_index(batch_op.f("ix_tokens_organization_id"))

    op.drop_table("tokens")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_index("ix_projects_org_created")

    op.drop_table("projects")
    op.drop_table("organizations")
