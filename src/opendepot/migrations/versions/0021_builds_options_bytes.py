"""The history quota counts a build's options (up to 256 KiB each): their size is kept on the build, set at
CreateBuild; existing builds get theirs from the stored JSON.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("builds", sa.Column("options_bytes", sa.BigInteger(), server_default="0", nullable=False))
    op.execute("UPDATE builds SET options_bytes = length(CAST(options AS TEXT))")


def downgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("options_bytes")
