"""The guest protocol's types (frostpoint/protocol.py, stdlib TypedDicts the guest
carries) and the host's pydantic models that validate the same bodies
(fabric/endpoints.py) name the same keys, and the bodies the real agent and
extensions build pass the host's validation."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import frostpoint
from frostpoint import protocol
from frostpoint.agent.config import DEFAULTS, AgentConfig
from frostpoint.agent.extensions import ExtensionHandler
from frostpoint.agent.main import heartbeat_body
from frostpoint.fabric import endpoints
from frostpoint.fabric.packages import GUEST_MODULES

SRC = Path(frostpoint.__file__).parent


def keys(td: Any) -> set[str]:
    return set(td.__required_keys__ | td.__optional_keys__)


def fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_the_host_models_name_the_protocols_keys() -> None:
    assert fields(endpoints.Heartbeat) == keys(protocol.HeartbeatBody)
    assert fields(endpoints.SnapshotRequest) == keys(protocol.SnapshotRequestBody)
    assert fields(endpoints.StatusReport) == keys(protocol.StatusBody)
    # Declared on the host: the agent's own keys (and warnings, which it defaults);
    # the rest are kept as reported, bounded by the body cap.
    declared = fields(endpoints.ExtensionReport)
    assert declared <= keys(protocol.ExtensionStatus)
    assert protocol.ExtensionStatus.__required_keys__ <= declared


def test_the_real_heartbeat_validates_and_nothing_is_ignored() -> None:
    body = heartbeat_body(AgentConfig(dict(DEFAULTS)))
    assert set(body) == keys(protocol.HeartbeatBody)
    hb = endpoints.Heartbeat.model_validate(body)
    assert hb.model_dump(exclude_none=True) == {k: v for k, v in body.items()
                                                if v is not None}


def test_the_agents_status_reports_validate() -> None:
    ext = {"name": protocol.SNAPSHOT_EXTENSION, "version": "0.1.0", "sequence": 3}
    for report in (ExtensionHandler._status(ext, "transitioning", None, "enable started"),
                   ExtensionHandler._status(ext, "error", "ExtensionOperationFailedForManaged"
                                            "Disks", "killed", signal=9),
                   {**ExtensionHandler._status(ext, "success", None, "snapshot taken"),
                    "warnings": [], "elapsedMs": 812.5, "consistency": "FileSystemConsistent",
                    "freezeMs": 40.0, "snapshot": {"snapshotId": "x"}}):
        assert set(report) <= keys(protocol.ExtensionStatus)
        body = endpoints.StatusReport.model_validate({"extensions": [report]}).model_dump()
        assert body["extensions"][0]["sequence"] == 3


@pytest.mark.parametrize("bad", ["Consistent", 7, ["CrashConsistent"], {"a": 1}])
def test_a_consistency_no_restore_point_can_carry_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        endpoints.ExtensionReport.model_validate(
            {"name": "x", "version": "1", "sequence": 1, "status": "success",
             "consistency": bad})


def test_the_guest_carries_the_protocol_module() -> None:
    assert "protocol.py" in GUEST_MODULES
    # Standard library only: the guest's python3 has no pydantic.
    tree = ast.parse(inspect.getsource(protocol))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"enum", "typing"}, imported


def test_every_fp_ext_name_comes_from_the_one_table() -> None:
    """No FP_ variable spelled outside protocol.ExtEnv in the guest code, and every one
    in the table is set by the agent (docs/extension.md lists them)."""
    names = {e.value for e in protocol.ExtEnv}
    for path in [*(SRC / "agent").glob("*.py"), *(SRC / "extension").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("FP_"), f"{path.name}: {node.value}"
    doc = (SRC.parent.parent / "docs" / "extension.md").read_text()
    assert all(f"`{n}`" in doc for n in names)
    src = inspect.getsource(ExtensionHandler._env)
    assert all(f"ExtEnv.{e.name}" in src for e in protocol.ExtEnv)
