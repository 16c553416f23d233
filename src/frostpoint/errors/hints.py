"""Fix hints with this case's values in them.

The catalog's actions are templates: `{machine}`, `{job}` and `SCRIPT` are filled from
what the error knows (the machine it is about, its details, its message). A NotFound
names the list command for the kind of object that was not found, not always `vm list`.
"""

from __future__ import annotations

import re
from typing import Any

# The kind of object a NotFound message names -> the command that lists the real names.
# First match wins: "key vault" before "vault", "disk" of a restore point before both.
NOT_FOUND = [
    ("error code", ["frostpoint errors"]),
    ("key vault", ["frostpoint keyvault list"]),
    ("is not on disk", ["frostpoint rp list --json  # a path is relative to the root of "
                        "the disk, e.g. docs/a.txt for /mnt/data/docs/a.txt"]),
    ("restore point", ["frostpoint rp list"]),
    ("vault", ["frostpoint vault list"]),
    ("policy", ["frostpoint policy list"]),
    ("resource group", ["frostpoint rg list"]),
    ("lock", ["frostpoint lock list"]),
    ("token", ["frostpoint token list"]),
    ("job", ["frostpoint job list"]),
    ("finding", ["frostpoint doctor {machine}"]),
    ("extension", ["frostpoint vm extension list {machine}"]),
    ("disk", ["frostpoint vm show {machine}"]),
]
SCRIPT_PATH = re.compile(r"^(/\S+):")


def actions_for(code: str, actions: list[str], message: str, details: dict[str, Any],
                machine: str | None) -> list[str]:
    if code == "NotFound":
        low = message.lower()
        actions = next((list(a) for word, a in NOT_FOUND if word in low), actions)
    if details.get("power_state") in ("Stopped", "Deallocated"):  # e.g. vm exec
        actions = ["frostpoint vm start {machine}", "frostpoint vm show {machine}"]
    machine = machine or _str(details.get("machine")) or "MACHINE"
    job = _str(details.get("job") or details.get("running_job")) or "JOB"
    script = SCRIPT_PATH.match(message)
    out = []
    for a in actions:
        a = a.replace("{machine}", machine).replace("{job}", job)
        if script:
            a = a.replace("SCRIPT", script.group(1))
        out.append(a)
    return out


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None
