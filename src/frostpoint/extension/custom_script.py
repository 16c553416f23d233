"""Frostpoint.CustomScript: runs settings.commandToExecute in the guest and reports.

A second extension beside the snapshot one, as clouds have; its failure puts the
machine's provisioning state in Failed (UserErrorVmProvisioningStateFailed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from frostpoint.protocol import ExtEnv


def main() -> None:
    if (sys.argv[1] if len(sys.argv) > 1 else "enable") != "enable":
        return
    seq = os.environ[ExtEnv.SEQUENCE]
    settings = json.loads(Path(os.environ[ExtEnv.CONFIG_DIR], f"{seq}.settings").read_text())
    status = Path(os.environ[ExtEnv.STATUS_DIR], f"{seq}.status")
    cmd = settings.get("commandToExecute", "true")
    p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                       timeout=float(settings.get("timeoutSeconds", 600)), check=False)
    ok = p.returncode == 0
    body = {"status": "success" if ok else "error",
            "code": None if ok else "UserErrorVmProvisioningStateFailed",
            "message": f"command exited {p.returncode}: {p.stderr.strip()[-500:]}",
            "stdout": p.stdout[-2000:]}
    tmp = status.with_name(status.name + ".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, status)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
