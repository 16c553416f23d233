"""machine kind (sandbox or qemu), and a QEMU guest's memory and CPUs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 02:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('machines') as b:
        b.add_column(sa.Column('kind', sa.String(length=16), nullable=False,
                               server_default='sandbox'))
        b.add_column(sa.Column('memory_bytes', sa.Integer(), nullable=False,
                               server_default=str(1 << 30)))
        b.add_column(sa.Column('cpus', sa.Integer(), nullable=False, server_default='1'))


def downgrade() -> None:
    with op.batch_alter_table('machines') as b:
        b.drop_column('cpus')
        b.drop_column('memory_bytes')
        b.drop_column('kind')
