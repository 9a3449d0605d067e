"""certificates: salted commitments, the filer's key, revocation records

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-30 04:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("filed_by", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("commitments", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("commitment_salt_ciphertext", sa.LargeBinary(), nullable=True))

    op.create_table(
        "certificate_revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("adapter_id", sa.String(length=36), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.ForeignKeyConstraint(["request_id"], ["forget_requests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("certificate_revocations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificate_revocations_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_certificate_revocations_request_id"), ["request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("certificate_revocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificate_revocations_request_id"))
        batch_op.drop_index(batch_op.f("ix_certificate_revocations_adapter_id"))
    op.drop_table("certificate_revocations")

    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.drop_column("commitment_salt_ciphertext")
        batch_op.drop_column("commitments")
        batch_op.drop_column("filed_by")
