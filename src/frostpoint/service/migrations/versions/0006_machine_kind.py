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


# Native ALTER TABLE only (as 0004): batch mode copies and drops `machines`, which
# SQLite's foreign keys refuse once restore points or jobs refer to a machine.
COLUMNS = (("kind", sa.String(length=16), "sandbox"),
           ("memory_bytes", sa.Integer(), str(1 << 30)),
           ("cpus", sa.Integer(), "1"))


def upgrade() -> None:
    for name, kind, default in COLUMNS:
        op.add_column('machines', sa.Column(name, kind, nullable=False,
                                            server_default=default))


def downgrade() -> None:
    for name, _kind, _default in reversed(COLUMNS):
        op.execute(f"ALTER TABLE machines DROP COLUMN {name}")
