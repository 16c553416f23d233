"""Defaults shared by the service and the CLI.

Kept apart from service.runtime so that the CLI can read them without importing the
service (SQLAlchemy, Alembic, the fabric): every CLI call would pay for that import.
"""

from pathlib import Path

DEFAULT_DATA_DIR = Path("/var/lib/frostpoint")
DEFAULT_LISTEN = "127.0.0.1:8420"
