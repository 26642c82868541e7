"""The history quota counts a build's step rows (up to 2,000 of ~5 KiB each): their size is kept on the
build as the steps are written; existing builds get theirs from their rows (in characters, where new writes
count UTF-8 bytes).

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("builds", sa.Column("steps_bytes", sa.BigInteger(), server_default="0", nullable=False))
    # 96: steps.STEP_ROW_BYTES, what a row holds beside its text.
    op.execute(
        "UPDATE builds SET steps_bytes = COALESCE((SELECT SUM(96 + length(digest) + length(name)"
        " + COALESCE(length(error), 0)) FROM build_steps WHERE build_steps.build_id = builds.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("steps_bytes")
