"""selective disks (protected item exclusions, what a restore point left out),
vault replication schedules and the copies they made, host mounts of restore points

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 02:20:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('protected_items') as b:
        b.add_column(sa.Column('excluded_disks', sa.JSON(), nullable=False,
                               server_default='[]'))
    with op.batch_alter_table('restore_points') as b:
        b.add_column(sa.Column('excluded_disks', sa.JSON(), nullable=False,
                               server_default='[]'))
    op.create_table('replications',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('source_vault_id', sa.String(length=32), nullable=False),
    sa.Column('target_vault_id', sa.String(length=32), nullable=False),
    sa.Column('every_seconds', sa.Integer(), nullable=True),
    sa.Column('last_job_id', sa.String(length=32), nullable=True),
    sa.Column('last_run_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['source_vault_id'], ['vaults.id']),
    sa.ForeignKeyConstraint(['target_vault_id'], ['vaults.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_vault_id', 'target_vault_id')
    )
    op.create_table('restore_point_copies',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('restore_point_id', sa.String(length=32), nullable=False),
    sa.Column('vault_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['restore_point_id'], ['restore_points.id']),
    sa.ForeignKeyConstraint(['vault_id'], ['vaults.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('restore_point_id', 'vault_id')
    )
    op.create_table('host_mounts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('restore_point_id', sa.String(length=32), nullable=False),
    sa.Column('disk', sa.String(length=64), nullable=False),
    sa.Column('image', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('path')
    )


def downgrade() -> None:
    op.drop_table('host_mounts')
    op.drop_table('restore_point_copies')
    op.drop_table('replications')
    with op.batch_alter_table('restore_points') as b:
        b.drop_column('excluded_disks')
    with op.batch_alter_table('protected_items') as b:
        b.drop_column('excluded_disks')
