"""The management API's response models (frostpoint/schemas.py) against a real server:
every answer parses with its route's model the way the CLI parses it, names no field the
model does not, keeps every field the service produced before the models existed, and
OpenAPI shows the real shapes and enums."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from conftest import Service, needs_root
from frostpoint import enums, protocol
from frostpoint import schemas as S
from frostpoint.enums import JobStatus, RestorePointTier, SubTaskName
from frostpoint.protocol import Consistency

M = "models"

# The keys each description had before the models (service/*.py describe*): a model
# that lost one would drop it from every answer without an error.
BEFORE = {
    "job": {"id", "operation", "machine", "trigger", "status", "started_at", "ended_at",
            "duration_s", "error", "warnings", "details", "subtasks"},
    "machine": {"name", "id", "region", "address", "provisioning_state", "power_state",
                "agent", "disks", "resource_group", "extensions", "kind", "memory_bytes",
                "cpus", "accel"},
    "restore_point": {"id", "machine", "job", "created_at", "consistency", "tier",
                      "freeze_ms", "disks", "instant_expires_at", "vault_expires_at",
                      "excluded_disks", "copies"},
    "vault": {"name", "id", "backend", "location", "restore_points", "created_at",
              "block_size", "soft_delete", "soft_delete_days", "immutability"},
}


def keys(td: Any) -> set[str]:
    return set(td.__required_keys__ | td.__optional_keys__)


def unnamed_fields(value: Any, where: str = "") -> list[str]:
    """Fields of a parsed answer that no model names, anywhere inside it."""
    out: list[str] = []
    if isinstance(value, BaseModel):
        out += [f"{where}.{k}" for k in (value.model_extra or {})]
        for name in type(value).model_fields:
            out += unnamed_fields(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += unnamed_fields(v, f"{where}[{i}]")
    return out


def check(model: Any, data: Any) -> Any:
    parsed = S.parse(model, data)
    assert unnamed_fields(parsed) == [], f"{model} does not name them"
    return parsed


def test_parse_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValidationError):
        S.parse(S.Job, {"id": "x", "status": "Sleeping"})
    with pytest.raises(ValidationError):
        S.parse(list[S.RestorePoint], [{"id": "x"}])


def test_docs_list_every_state() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    for name in enums.__all__:
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{name}` |")), "")
        assert row, f"docs/api.md has no row for {name}"
        for member in getattr(enums, name):
            assert f"`{member.value}`" in row, f"docs/api.md: {name} lacks {member.value}"


def test_the_models_import_without_sqlalchemy() -> None:
    code = ("import sys, frostpoint.schemas; "
            "bad = [m for m in sys.modules if m.startswith(('sqlalchemy', "
            "'frostpoint.service', 'fastapi'))]; print(bad); sys.exit(bool(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@needs_root
def test_real_answers_parse_with_their_models(service: Service) -> None:
    c = service.client
    check(S.Health, c.get("/health"))
    check(list[S.ApiError], c.get("/errors"))
    service.protected_machine(M)
    job = check(S.Job, service.backup(M))
    assert job.status in (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_WARNINGS)
    assert [t.name for t in job.subtasks] == [SubTaskName.TAKE_SNAPSHOT,
                                              SubTaskName.TRANSFER]

    # The same server's guest protocol (here, not in test_protocol_types.py, to share the
    # machine and its backup): the goal state the real agent received and saved names
    # exactly the keys of frostpoint.protocol's types.
    goal = json.loads((service.guest_file(M, "lib") / "agent-state.json").read_text())
    assert set(goal) == keys(protocol.GoalState)
    snap = next(e for e in goal["extensions"] if e["name"] == protocol.SNAPSHOT_EXTENSION)
    assert set(snap) == keys(protocol.GoalStateExtension)
    assert set(snap["settings"]) == keys(protocol.SnapshotSettings)
    reported = c.get(f"/machines/{M}")["extensions"][0]["status"]
    assert set(reported) <= keys(protocol.ExtensionStatus), reported

    raw_job = c.get(f"/jobs/{job.id}")
    raw_machine = c.get(f"/machines/{M}")
    raw_rps = c.get("/restore-points", params={"machine": M})
    raw_vaults = c.get("/vaults")
    assert set(raw_job) == BEFORE["job"]
    assert set(raw_machine) == BEFORE["machine"]
    assert set(raw_rps[0]) == BEFORE["restore_point"]
    assert set(raw_vaults[0]) == BEFORE["vault"]

    check(S.Job, raw_job)
    check(list[S.Job], c.get("/jobs"))
    check(S.Job, c.post(f"/jobs/{job.id}/cancel"))  # ended: answered as it is
    machine = check(S.Machine, raw_machine)
    assert machine.agent.status == "Ready" and machine.agent.os
    assert any(e.status for e in machine.extensions)  # the snapshot extension's report
    check(list[S.Machine], c.get("/machines"))
    rps = check(list[S.RestorePoint], raw_rps)
    assert rps[0].tier == RestorePointTier.SNAPSHOT_AND_VAULT
    assert rps[0].consistency in (Consistency.FILE_SYSTEM, Consistency.APPLICATION)
    check(list[S.Vault], raw_vaults)
    check(list[S.Policy], c.get("/policies"))
    check(S.Protection, c.get(f"/protection/{M}"))
    check(list[S.Finding], c.get(f"/machines/{M}/doctor"))
    check(S.ExecResult, c.post(f"/machines/{M}/exec", {"argv": ["true"]}))
    rg = check(list[S.ResourceGroup], c.get("/resource-groups"))
    check(S.Lock, c.post("/locks", {"name": "lk", "resource_group": rg[0].name}))
    check(list[S.Lock], c.get("/locks"))
    check(S.Deleted, c.delete("/locks/lk"))
    check(S.KeyVault, c.post("/keyvaults", {"name": "kvm"}))
    check(S.KeyVault, c.post("/keyvaults/kvm/keys", {"name": "k1"}))
    check(S.KeyVault, c.post("/keyvaults/kvm/grants", {}))
    check(list[S.KeyVault], c.get("/keyvaults"))
    check(S.KeyVault, c.delete("/keyvaults/kvm/grants/frostpoint-backup"))
    check(S.NewToken, c.post("/tokens", {"name": "models-r"}))
    check(list[S.Token], c.get("/tokens"))
    check(S.TokenRevoked, c.delete("/tokens/models-r"))
    check(S.KeyFile, c.post("/vaults/v1/key/export", {"passphrase": "a long passphrase"}))
    for route, report in (("verify", S.VerifyReport), ("gc", S.GcReport)):
        started = check(S.Job, c.post(f"/vaults/v1/{route}"))
        ended = check(S.Job, service.wait_job(started.id))
        assert ended.status == JobStatus.COMPLETED, ended.error
        check(report, ended.details["report"])
    with tempfile.TemporaryDirectory(prefix="fp-models-") as to:
        restore = check(S.Job, c.post("/restores/disks", {"restore_point": rps[0].id,
                                                          "to": to}))
        assert restore.subtasks[0].name == SubTaskName.RESTORE
        done = check(S.Job, service.wait_job(restore.id))
        assert done.status == JobStatus.COMPLETED, done.error
        assert any(Path(to).iterdir())


@needs_root
def test_openapi_shows_the_real_shapes(service: Service) -> None:
    doc = service.client.get("/openapi.json")
    schemas = doc["components"]["schemas"]

    def response(path: str, method: str = "get") -> dict[str, Any]:
        body = doc["paths"][path][method]["responses"]["200"]["content"]
        return dict(body["application/json"]["schema"])

    assert response("/jobs/{job_id}") == {"$ref": "#/components/schemas/Job"}
    status = schemas["Job"]["properties"]["status"]
    assert schemas[status["$ref"].rsplit("/", 1)[1]]["enum"] == [s.value for s in JobStatus]
    tier = schemas["RestorePoint"]["properties"]["tier"]
    assert schemas[tier["$ref"].rsplit("/", 1)[1]]["enum"] == [
        "Snapshot", "Snapshot and Vault", "Vault"]
    assert response("/restore-points")["items"] == {
        "$ref": "#/components/schemas/RestorePoint"}
    # Every route of the API declares what it answers: no bare "object" left.
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            if path == "/metrics":  # Prometheus text, not JSON
                assert list(op["responses"]["200"]["content"]) == [
                    "text/plain; version=0.0.4; charset=utf-8"]
                continue
            content = op["responses"]["200"]["content"]["application/json"]
            assert content["schema"] != {}, f"{method.upper()} {path} has no response model"
            assert "additionalProperties" not in content["schema"], (method, path)
