"""record fallback and outline reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 21:42:58.446981
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sop_instance_uid', sa.String(length=64), nullable=True))

    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fallback_sop_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('fallback_file_path', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('outline_sop_instance_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('outline_file_path', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_column('outline_file_path')
        batch_op.drop_column('outline_sop_instance_uid')
        batch_op.drop_column('fallback_file_path')
        batch_op.drop_column('fallback_sop_instance_uid')

    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_column('sop_instance_uid')

