"""frostpoint vm ...: sandbox machines, their disks, extensions and agent."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from frostpoint.cli.client import Client, emit
from frostpoint.cli.common import JSON, MACHINE, api, arg, group, table

vm = group("Sandbox machines.")
ext = group("Extensions on a machine.")
disk_cmd = group("Disks of a machine.")
agent = group("The guest agent of a machine.")
vm.add_typer(disk_cmd, name="disk")
vm.add_typer(ext, name="extension")
vm.add_typer(agent, name="agent")


@vm.command("create")
@api
def vm_create(name: str = arg("NAME", "The new machine: 1-20 of a-z 0-9 -, from a-z."),
              disk: list[str] = typer.Option(
                  ["data:256M:ext4"], metavar="NAME[:SIZE[:ext4|xfs]]",
                  help="A disk (repeat for more). SIZE like 512M or 2G, default 256M; at "
                       "least 16M (300M for xfs)."),
              encryption_key: str = typer.Option(
                  None, metavar="KEYVAULT/KEY",
                  help="Encrypt every disk (ext4) with a data key wrapped by this key."),
              no_agent: bool = typer.Option(
                  False, "--no-agent", help="No guest agent: backups are crash-consistent."),
              agent_version: str = typer.Option(
                  None, metavar="X.Y.Z",
                  help="Make it from an image with this (older) agent release."),
              kind: str = typer.Option(
                  "sandbox", metavar="sandbox|qemu",
                  help="sandbox: namespaces on this host's kernel (fast); qemu: a QEMU "
                       "virtual machine with its own kernel (docs/machines.md)."),
              memory: str = typer.Option("1G", metavar="SIZE",
                                         help="A VM's memory (qemu), e.g. 512M, 2G."),
              cpus: int = typer.Option(1, metavar="N", help="A VM's CPUs (qemu)."),
              as_json: bool = JSON) -> None:
    """Create and start a machine: a sandbox, or a QEMU VM (--kind qemu)."""
    disks = []
    for d in disk:
        parts = d.split(":")
        disks.append({"name": parts[0], "size": parts[1] if len(parts) > 1 else "256M",
                      "filesystem": parts[2] if len(parts) > 2 else "ext4",
                      "encryption_key": encryption_key})
    emit(Client().post("/machines", {"name": name, "disks": disks, "agent": not no_agent,
                                     "agent_version": agent_version, "kind": kind,
                                     "memory": memory, "cpus": cpus}), as_json)


@vm.command("import")
@api
def vm_import(name: str = arg("NAME", "The new VM: 1-20 of a-z 0-9 -, from a-z."),
              disk: list[str] = typer.Option(
                  ..., metavar="NAME=PATH",
                  help="A disk image of yours (raw or qcow2, ext4 or xfs on the whole disk) "
                       "on this host, converted into the pool; the VM sees it at /mnt/NAME. "
                       "Repeat for more."),
              kind: str = typer.Option("qemu", metavar="qemu",
                                       help="The machine kind: only qemu imports disks."),
              memory: str = typer.Option("1G", metavar="SIZE", help="The VM's memory."),
              cpus: int = typer.Option(1, metavar="N", help="The VM's CPUs."),
              as_json: bool = JSON) -> None:
    """Make and start a QEMU VM from disk images you have (no agent yet: `vm agent install`)."""
    if kind != "qemu":
        raise typer.BadParameter("only --kind qemu imports disks", param_hint="--kind")
    disks = []
    for d in disk:
        dname, sep, path = d.partition("=")
        if not sep or not dname or not path:
            raise typer.BadParameter(f"{d!r}: use NAME=PATH", param_hint="--disk")
        disks.append({"name": dname, "path": str(Path(path).absolute())})
    emit(Client().post("/machines/import", {"name": name, "disks": disks, "memory": memory,
                                            "cpus": cpus}), as_json)


@vm.command("list")
@api
def vm_list(as_json: bool = JSON) -> None:
    """Machines with their state, agent and address."""
    rows = Client().get("/machines")
    emit(rows, as_json, lambda d: table([{**m, "agent": m["agent"]["status"],
                                          "disks": len(m["disks"])} for m in d],
                                        ["name", "provisioning_state", "power_state",
                                         "agent", "address", "disks"]))


@vm.command("show")
@api
def vm_show(name: str = MACHINE, as_json: bool = JSON) -> None:
    """A machine: disks, agent, extensions, resource group."""
    emit(Client().get(f"/machines/{name}"), as_json)


@vm.command("console")
@api
def vm_console(name: str = MACHINE, as_json: bool = JSON) -> None:
    """Print the end of the machine's console: a VM's serial log (this boot)."""
    r = Client().get(f"/machines/{name}/console")
    if as_json:
        emit(r, True)
    else:
        sys.stdout.write(r["console"])


@vm.command("start")
@api
def vm_start(name: str = MACHINE, as_json: bool = JSON) -> None:
    """Power on a stopped or deallocated machine."""
    emit(Client().post(f"/machines/{name}/start"), as_json)


@vm.command("stop")
@api
def vm_stop(name: str = MACHINE, as_json: bool = JSON) -> None:
    """Power off: the guest's processes end and its disks are unmounted."""
    emit(Client().post(f"/machines/{name}/stop"), as_json)


@vm.command("deallocate")
@api
def vm_deallocate(name: str = MACHINE, as_json: bool = JSON) -> None:
    """Power off and release the machine's slot; its disks stay."""
    emit(Client().post(f"/machines/{name}/deallocate"), as_json)


@vm.command("delete")
@api
def vm_delete(name: str = MACHINE, as_json: bool = JSON) -> None:
    """Delete a machine and its disks (its restore points stay)."""
    emit(Client().delete(f"/machines/{name}"), as_json)


@vm.command("exec", context_settings={"allow_extra_args": True,
                                      "ignore_unknown_options": True})
@api
def vm_exec(ctx: typer.Context, name: str = MACHINE, as_json: bool = JSON) -> None:
    """Run a command inside the machine: frostpoint vm exec NAME -- CMD ARGS..."""
    argv = [a for a in ctx.args if a != "--"] if ctx.args[:1] == ["--"] else ctx.args
    r = Client().post(f"/machines/{name}/exec", {"argv": argv})
    if as_json:
        emit(r, True)
    else:
        sys.stdout.write(r["stdout"])
        sys.stderr.write(r["stderr"])
    raise typer.Exit(r["returncode"])


@ext.command("list")
@api
def ext_list(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """The machine's extensions and their state."""
    rows = Client().get(f"/machines/{machine}")["extensions"]
    emit(rows, as_json, lambda d: table(d, ["name", "version", "provisioning_state",
                                            "sequence"]))


@ext.command("set")
@api
def ext_set(machine: str = MACHINE, name: str = arg("EXTENSION", "e.g. Frostpoint.CustomScript."),
            command: str = typer.Option(None, metavar="CMD",
                                        help="commandToExecute (CustomScript)."),
            as_json: bool = JSON) -> None:
    """Add or update an extension, e.g. Frostpoint.CustomScript --command '...'."""
    settings = {"commandToExecute": command} if command else {}
    emit(Client().call("PUT", f"/machines/{machine}/extensions/{name}",
                       json={"settings": settings}), as_json)


@ext.command("remove")
@api
def ext_remove(machine: str = MACHINE, name: str = arg("EXTENSION", "The extension."),
               as_json: bool = JSON) -> None:
    """Remove an extension from the machine."""
    emit(Client().delete(f"/machines/{machine}/extensions/{name}"), as_json)


@disk_cmd.command("delete")
@api
def disk_delete(machine: str = MACHINE, disk: str = arg("DISK", "The disk."),
                as_json: bool = JSON) -> None:
    """Detach a disk from MACHINE and delete it."""
    emit(Client().delete(f"/machines/{machine}/disks/{disk}"), as_json)


@agent.command("restart")
@api
def agent_restart(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """Restart the guest agent (and its supervisor if it gave up)."""
    emit(Client().post(f"/machines/{machine}/agent/restart"), as_json)


@agent.command("install")
@api
def agent_install(machine: str = MACHINE, as_json: bool = JSON) -> None:
    """Install and start the guest agent in a machine made without it."""
    emit(Client().post(f"/machines/{machine}/agent/install"), as_json)
