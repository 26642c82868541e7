"""CI token uses, login requests

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_token_uses",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_oidc_token_uses")),
    )
    op.create_index(op.f("ix_oidc_token_uses_expires_at"), "oidc_token_uses", ["expires_at"], unique=False)
    op.create_table(
        "login_requests",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_organization_id", sa.String(length=10), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approved_by", sa.String(length=32), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_requests")),
    )
    op.create_index(op.f("ix_login_requests_expires_at"), "login_requests", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_login_requests_expires_at"), table_name="login_requests")
    op.drop_table("login_requests")
    op.drop_index(op.f("ix_oidc_token_uses_expires_at"), table_name="oidc_token_uses")
    op.drop_table("oidc_token_uses")
