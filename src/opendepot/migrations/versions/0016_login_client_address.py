"""Login requests keep the client address StartLogin came from apart from the origin text: StartLogin bounds
the requests one address may have waiting

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("login_requests", sa.Column("client_address", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_requests") as batch:
        batch.drop_column("client_address")
