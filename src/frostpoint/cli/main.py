"""frostpoint: the command line. Talks to the service over REST; --json everywhere.

This module only assembles the app from the command groups. None of them imports the
service (SQLAlchemy, Alembic, the fabric) at module level, so a command starts fast;
`frostpoint server` imports it when it runs (tests/test_cli_structure.py checks).
"""

from __future__ import annotations

import typer

from frostpoint.cli import admin, doctor, jobs, machines, ops, policies, recovery, vaults
from frostpoint.cli.common import HELP_STYLE

app = typer.Typer(no_args_is_help=True, help="Frostpoint: backup for virtual machines.",
                  **HELP_STYLE)
assert recovery  # its commands join the rp, restore, protect and vault groups
app.command()(admin.server)
app.command()(admin.quickstart)
app.command()(admin.errors)
app.command()(doctor.doctor)
app.command()(ops.status)
for sub, name in ((machines.vm, "vm"), (vaults.vault, "vault"), (policies.policy, "policy"),
                  (vaults.protect, "protect"), (jobs.backup, "backup"), (jobs.job, "job"),
                  (jobs.rp, "rp"), (jobs.restore, "restore"), (admin.lock, "lock"),
                  (admin.keyvault, "keyvault"), (admin.token, "token"), (admin.rg, "rg"),
                  (ops.notify, "notify")):
    app.add_typer(sub, name=name)

if __name__ == "__main__":
    app()
