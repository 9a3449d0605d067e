"""envelope encryption: per-request data keys wrapped by a master key, the subject sealed and listed by label

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 03:50:00.000000

Requests filed before this revision keep their uploads under the old data key (DATA_DIR/secrets/data.key) and
have no request key: a worker fails them as purged ("file it again"), and they are purged when they end. Their
subject names are replaced by a label under a throwaway key, so no name stays in plain text.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_keys",
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["forget_requests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("request_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_request_keys_master_key_id"), ["master_key_id"], unique=False)

    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_label", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("subject_ciphertext", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    requests = sa.table("forget_requests", sa.column("id"), sa.column("subject"), sa.column("subject_label"))
    throwaway = os.urandom(32)
    for request_id, subject in bind.execute(sa.select(requests.c.id, requests.c.subject)).all():
        label = hmac.new(throwaway, subject.encode(), hashlib.sha256).hexdigest()
        bind.execute(requests.update().where(requests.c.id == request_id).values(subject_label=label))
    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.alter_column("subject_label", server_default=None)
        batch_op.drop_column("subject")


def downgrade() -> None:
    # The names are gone for good: the label stands in for them.
    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.Text(), nullable=False, server_default=""))
    op.execute("UPDATE forget_requests SET subject = subject_label")
    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.alter_column("subject", server_default=None)
        batch_op.drop_column("subject_ciphertext")
        batch_op.drop_column("subject_label")

    with op.batch_alter_table("request_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_keys_master_key_id"))
    op.drop_table("request_keys")
