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


# Native ALTER TABLE only (SQLite 3.35+): batch mode would copy and drop tables that
# other tables' rows reference, which foreign keys (PRAGMA foreign_keys=ON) refuse.
def upgrade() -> None:
    for table, columns in (('policies', POLICY_COLUMNS), ('vaults', VAULT_COLUMNS)):
        for name, kind, default in columns:
            op.add_column(table, sa.Column(name, kind, nullable=False,
                                           server_default=default))
    # A date was a day's one slot: the slot at the policy's time of that day.
    op.execute("ALTER TABLE protected_items RENAME COLUMN last_scheduled_date "
               "TO last_scheduled_slot")
    if op.get_bind().dialect.name != "sqlite":  # SQLite does not enforce lengths
        op.alter_column('protected_items', 'last_scheduled_slot',
                        type_=sa.String(length=16), existing_type=sa.String(length=10))
    op.add_column('protected_items', sa.Column('deleted_at', sa.DateTime(), nullable=True))
    op.execute("UPDATE protected_items SET last_scheduled_slot = last_scheduled_slot || 'T' "
               "|| (SELECT schedule_time FROM policies WHERE policies.id = "
               "protected_items.policy_id) WHERE last_scheduled_slot IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE protected_items SET last_scheduled_slot = "
               "substr(last_scheduled_slot, 1, 10)")
    op.execute("ALTER TABLE protected_items DROP COLUMN deleted_at")
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column('protected_items', 'last_scheduled_slot',
                        type_=sa.String(length=10), existing_type=sa.String(length=16))
    op.execute("ALTER TABLE protected_items RENAME COLUMN last_scheduled_slot "
               "TO last_scheduled_date")
    for table, columns in (('vaults', VAULT_COLUMNS), ('policies', POLICY_COLUMNS)):
        for name, _, _ in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
