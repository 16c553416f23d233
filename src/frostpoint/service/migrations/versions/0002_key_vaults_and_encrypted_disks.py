"""key vaults and encrypted disks; disk sizes as 64-bit (PostgreSQL)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 07:56:37.363372
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('key_vaults',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('key_vault_grants',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('key_vault_id', sa.String(length=32), nullable=False),
    sa.Column('principal', sa.String(length=128), nullable=False),
    sa.Column('permissions', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['key_vault_id'], ['key_vaults.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_vault_id', 'principal')
    )
    op.create_table('key_vault_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('key_vault_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['key_vault_id'], ['key_vaults.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_vault_id', 'name')
    )
    with op.batch_alter_table('disks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_ref', sa.String(length=260), nullable=True))
        batch_op.add_column(sa.Column('wrapped_key', sa.String(length=256), nullable=True))
        batch_op.alter_column('size_bytes',
               existing_type=sa.INTEGER(),
               type_=sa.BigInteger(),
               existing_nullable=False)



def downgrade() -> None:
    with op.batch_alter_table('disks', schema=None) as batch_op:
        batch_op.alter_column('size_bytes',
               existing_type=sa.BigInteger(),
               type_=sa.INTEGER(),
               existing_nullable=False)
        batch_op.drop_column('wrapped_key')
        batch_op.drop_column('key_ref')

    op.drop_table('key_vault_keys')
    op.drop_table('key_vault_grants')
    op.drop_table('key_vaults')
