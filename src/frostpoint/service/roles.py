"""Who may call which route of the management API, and where an operator may restore
to (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

from frostpoint.errors.catalog import FrostpointError

# The role each route needs (docs/security.md; tests/test_auth.py checks every route in
# OpenAPI against its own copy). A route missing here needs admin, and has no role in
# OpenAPI, which that test refuses: a new route fails closed and cannot be forgotten.
# reader: reads only. operator: doctor, backups, job cancel, restores (disks and files
# only into DATA/restores). admin: everything, including exec, deletes, locks and key vaults.
PUBLIC = {("GET", "/health")}
READER = {("GET", p) for p in (
    "/errors", "/machines", "/machines/{name}", "/vaults",
    "/policies", "/policies/{name}", "/policies/{name}/preview", "/protection/{machine}",
    "/jobs", "/jobs/{job_id}", "/restore-points",
    "/locks", "/keyvaults", "/keyvaults/{name}", "/resource-groups", "/replications",
    "/restores/mounts", "/metrics", "/status")}
# doctor is a GET but not a read: it runs the agent's doctor in the guest, which writes
# a probe file to each disk.
OPERATOR = {("GET", "/machines/{name}/doctor"), ("GET", "/machines/{name}/console"),
            ("POST", "/backups"), ("POST", "/jobs/{job_id}/cancel"),
            ("POST", "/restores/vm"), ("POST", "/restores/disks"),
            ("POST", "/restores/files"), ("GET", "/restore-points/{rp_id}/browse")}
ADMIN = {
    ("POST", "/machines"), ("POST", "/machines/import"), ("POST", "/machines/{name}/start"),
    ("POST", "/machines/{name}/stop"), ("POST", "/machines/{name}/deallocate"),
    ("DELETE", "/machines/{name}"), ("POST", "/machines/{name}/exec"),
    ("DELETE", "/machines/{name}/disks/{disk}"), ("POST", "/machines/{name}/agent/restart"),
    ("POST", "/machines/{name}/agent/install"), ("POST", "/machines/{name}/doctor/fix"),
    ("PUT", "/machines/{name}/extensions/{ext}"),
    ("DELETE", "/machines/{name}/extensions/{ext}"),
    ("POST", "/vaults"), ("DELETE", "/vaults/{name}"), ("POST", "/vaults/{name}/verify"),
    ("POST", "/vaults/{name}/key/export"), ("POST", "/vaults/import"),
    ("POST", "/vaults/{name}/gc"), ("PATCH", "/vaults/{name}"),
    ("POST", "/vaults/{name}/immutability"), ("POST", "/policies"),
    ("PATCH", "/policies/{name}"), ("DELETE", "/policies/{name}"),
    ("POST", "/protection/enable"), ("POST", "/protection/{machine}/undelete"),
    ("DELETE", "/restore-points/{rp_id}"),
    ("POST", "/protection/{machine}/stop"), ("POST", "/protection/{machine}/resume"),
    ("POST", "/protection/{machine}/disable"),
    ("DELETE", "/machines/{name}/restore-point-collection"),
    ("POST", "/locks"), ("DELETE", "/locks/{name}"),
    ("POST", "/keyvaults"), ("POST", "/keyvaults/{name}/keys"),
    ("POST", "/keyvaults/{name}/grants"), ("DELETE", "/keyvaults/{name}/grants/{principal}"),
    ("POST", "/tokens"), ("GET", "/tokens"), ("DELETE", "/tokens/{name}"),
    # replace swaps a machine's disks; a mount goes anywhere on the host
    ("POST", "/restores/replace"), ("POST", "/restores/mount"), ("POST", "/restores/unmount"),
    ("POST", "/vaults/{name}/replicate"), ("POST", "/protection/{machine}/update"),
    # a webhook URL can hold the receiver's own secret
    ("POST", "/notify"), ("GET", "/notify"), ("DELETE", "/notify/{name}"),
    ("POST", "/notify/{name}/test"),
}


def route_role(method: str, path: str) -> str | None:
    """The role a route needs: "public", a role name, or None (undeclared: admin)."""
    for role, routes in (("public", PUBLIC), ("reader", READER), ("operator", OPERATOR),
                         ("admin", ADMIN)):
        if (method, path) in routes:
            return role
    return None


def contained(area: Path, to: str) -> str:
    """An operator's restore target, resolved (symlinks too) inside the restore area;
    a relative one is taken inside it. Returns the resolved path the restore then uses,
    so the path checked is the path written."""
    base = area.resolve()
    try:
        target = (base / to).resolve()
    except (ValueError, OSError, RuntimeError) as e:  # a NUL, a symlink loop: no path
        raise FrostpointError("InvalidInput", f"--to is not a usable path: {to!r}") from e
    if not target.is_relative_to(base):
        raise FrostpointError("AuthorizationFailed", f"an operator restores only into "
                              f"{base}; {to} is outside it (an admin may restore anywhere)")
    return str(target)
