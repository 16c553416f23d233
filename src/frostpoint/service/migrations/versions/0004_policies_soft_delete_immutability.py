"""policies: hourly schedules and GFS retention; soft delete; immutable vaults

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 02:30:00.000000
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

POLICY_COLUMNS: list[tuple[str, Any, str]] = [
    ('schedule_kind', sa.String(length=8), 'daily'),
    ('every_hours', sa.Integer(), '24'),
    ('window_hours', sa.Integer(), '24'),
    ('weekly_keep', sa.Integer(), '0'),
    ('weekly_on', sa.String(length=3), 'sun'),
    ('monthly_keep', sa.Integer(), '0'),
    ('monthly_on', sa.String(length=12), '1'),
    ('yearly_keep', sa.Integer(), '0'),
    ('yearly_in', sa.String(length=3), 'jan'),
]
VAULT_COLUMNS: list[tuple[str, Any, str]] = [
    ('soft_delete', sa.String(length=16), 'On'),
    ('soft_delete_days', sa.Integer(), '14'),
    ('immutability', sa.String(length=16), 'Disabled'),
]


def upgrade() -> None:
    with op.batch_alter_table('policies') as b:
        for name, kind, default in POLICY_COLUMNS:
            b.add_column(sa.Column(name, kind, nullable=False, server_default=default))
    with op.batch_alter_table('vaults') as b:
        for name, kind, default in VAULT_COLUMNS:
            b.add_column(sa.Column(name, kind, nullable=False, server_default=default))
    with op.batch_alter_table('protected_items') as b:
        # A date was a day's one slot: the slot at the policy's time of that day.
        b.alter_column('last_scheduled_date', new_column_name='last_scheduled_slot',
                       type_=sa.String(length=16), existing_type=sa.String(length=10))
        b.add_column(sa.Column('deleted_at', sa.DateTime(), nullable=True))
    op.execute("UPDATE protected_items SET last_scheduled_slot = last_scheduled_slot || 'T' "
               "|| (SELECT schedule_time FROM policies WHERE policies.id = "
               "protected_items.policy_id) WHERE last_scheduled_slot IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE protected_items SET last_scheduled_slot = "
               "substr(last_scheduled_slot, 1, 10)")
    with op.batch_alter_table('protected_items') as b:
        b.drop_column('deleted_at')
        b.alter_column('last_scheduled_slot', new_column_name='last_scheduled_date',
                       type_=sa.String(length=10), existing_type=sa.String(length=16))
    with op.batch_alter_table('vaults') as b:
        for name, _, _ in VAULT_COLUMNS:
            b.drop_column(name)
    with op.batch_alter_table('policies') as b:
        for name, _, _ in POLICY_COLUMNS:
            b.drop_column(name)
