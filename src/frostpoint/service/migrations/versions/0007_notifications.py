"""notifications (webhook targets and their queued deliveries), policy RPO and the
protected item's raised rpo-missed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 03:10:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('policies') as b:
        b.add_column(sa.Column('rpo_hours', sa.Integer(), nullable=True))
    with op.batch_alter_table('protected_items') as b:
        b.add_column(sa.Column('rpo_missed_at', sa.DateTime(), nullable=True))
    op.create_table('notify_targets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('signed', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('notify_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('target_id', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.String(length=512), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['target_id'], ['notify_targets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_notify_deliveries_due', 'notify_deliveries',
                    ['status', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_notify_deliveries_due', 'notify_deliveries')
    op.drop_table('notify_deliveries')
    op.drop_table('notify_targets')
    # Not batch mode: SQLite would rebuild policies, which protected_items refers to.
    op.execute("ALTER TABLE protected_items DROP COLUMN rpo_missed_at")
    op.execute("ALTER TABLE policies DROP COLUMN rpo_hours")
