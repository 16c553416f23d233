"""The one error catalog: every failure a user can meet, with causes and fixes.

Codes are the well-known ones of agent-based VM backup (see docs/errors.md), so an
operator who knows them is at home. Actions are Frostpoint commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from frostpoint.errors.hints import actions_for


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    kind: str  # "user" or "internal"
    retryable: bool
    message: str
    causes: tuple[str, ...]
    actions: tuple[str, ...]
    # The HTTP status the API answers with when a request fails with this code (a
    # failed job is a 200 answer carrying the error; this is for requests only).
    http_status: int

    @property
    def doc_link(self) -> str:
        return f"docs/errors.md#{self.code.lower()}"


def _spec(code: str, kind: str, retryable: bool, message: str,
          causes: list[str], actions: list[str], *, status: int) -> ErrorSpec:
    return ErrorSpec(code, kind, retryable, message, tuple(causes), tuple(actions), status)


CATALOG: dict[str, ErrorSpec] = {s.code: s for s in [
    _spec("UserErrorGuestAgentStatusUnavailable", "user", True,
          "The guest agent of the machine is not reachable or not ready.",
          ["The agent is stopped, hung or not installed.",
           "The agent's last heartbeat is older than the limit.",
           "The agent reports NotReady.",
           "The agent cannot find the fabric endpoint: Endpoint.Address=auto, and no "
           "DHCP lease names it in option 245 (DHCP turned off in the guest, a static "
           "address) and no default route leads to it."],
          ["frostpoint vm show {machine}",
           "frostpoint vm agent restart {machine}",
           "frostpoint doctor {machine}",
           "frostpoint doctor {machine} --fix  # no discovery: names the fabric address",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("GuestChannelUnavailable", "user", True,
          "The host channel of a QEMU guest (virtio-serial, served by the guest's "
          "frostpoint-channel service) did not answer, or answered with something invalid.",
          ["The VM is still booting, or it is stopped.",
           "The guest's frostpoint-channel service is stopped or dead (every process in "
           "the guest killed): nothing in the guest can run a program or thaw a disk.",
           "The guest sent an oversized, malformed or unrelated reply (refused)."],
          ["frostpoint vm show {machine}",
           "frostpoint vm console {machine}",
           "frostpoint vm stop {machine} && frostpoint vm start {machine}  # a guest "
           "whose processes all died, frozen: its reboot thaws it",
           "frostpoint doctor {machine}"], status=409),
    _spec("GuestAgentSnapshotTaskStatusError", "user", True,
          "The guest agent heartbeats but reported no status for the snapshot task.",
          ["Extensions are disabled in the agent config (Extensions.Enabled=n).",
           "The agent is older than the minimum version.",
           "The snapshot extension cannot be executed (noexec, permission, "
           "application control): the error's details name the path and why.",
           "The snapshot status cannot be read."],
          ["frostpoint vm exec {machine} -- sed -i 's/^Extensions.Enabled=.*/"
           "Extensions.Enabled=y/' /etc/frostpoint/agent.conf",
           "frostpoint vm agent restart {machine}",
           "frostpoint doctor {machine}  # names a path that cannot be executed",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("UserErrorVmProvisioningStateFailed", "user", True,
          "The machine's provisioning state is Failed.",
          ["An extension on the machine is in a failed state."],
          ["frostpoint vm extension list {machine}",
           "frostpoint vm extension remove {machine} NAME",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("UserErrorRpCollectionLimitReached", "user", False,
          "The machine has reached the limit of 18 instant restore points.",
          ["A lock on the restore points' resource group stops the cleanup.",
           "Too many backups a day."],
          ["frostpoint rg list  # the resource groups and their locks",
           "frostpoint lock delete LOCK",
           "frostpoint rp delete-collection {machine}  # when none has expired",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("UserErrorKeyvaultPermissionsNotConfigured", "user", False,
          "The backup service has no access to the key of an encrypted disk.",
          ["The key vault holding the disk's key does not grant get/unwrapKey to the "
           "backup service (principal frostpoint-backup).",
           "The grant was revoked, or the key vault or key was replaced."],
          ["frostpoint vm show {machine}  # each disk's encryption_key is KEYVAULT/KEY",
           "frostpoint keyvault grant KEYVAULT --principal frostpoint-backup",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("ExtensionSnapshotFailedNoNetwork", "user", True,
          "Inside the machine the fabric's host endpoint cannot be reached.",
          ["A firewall rule inside the machine blocks the host port.",
           "No route to the fabric address."],
          ["frostpoint doctor {machine}",
           "frostpoint vm exec {machine} -- iptables -S OUTPUT",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("ExtensionOperationFailedForManagedDisks", "user", True,
          "The snapshot extension's operation failed.",
          ["The freeze failed or the extension crashed during the snapshot.",
           "The host refused the snapshot request (e.g. its backup job had already "
           "ended).",
           "The extension was killed from outside (security software)."],
          ["frostpoint job show {job}",
           "frostpoint vm extension remove {machine} Frostpoint.Backup.Snapshot",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("BackUpOperationFailed", "internal", True,
          "The backup failed because of an internal error.",
          ["A storage or database fault.", "An unexpected exception.",
           "The service restarted while the job ran."],
          ["frostpoint job show {job}", "frostpoint backup now {machine} --wait"], status=400),
    _spec("BackUpOperationFailedV2", "internal", True,
          "The backup failed because of an internal error.",
          ["A lock stopped the deletion of old restore points.",
           "A storage or database fault."],
          ["frostpoint lock list", "frostpoint backup now {machine} --wait"], status=400),
    _spec("UserErrorUnsupportedDiskSize", "user", False,
          "A disk is larger than the supported size (32 TiB; 4 TiB encrypted).",
          ["A disk above 32 TiB.", "An encrypted disk above 4 TiB."],
          ["Split the disk into smaller disks."], status=400),
    _spec("UserErrorBackupOperationInProgress", "user", True,
          "Another backup of this machine is running.",
          ["A scheduled or on-demand backup of the same machine is in progress."],
          ["frostpoint job list --machine {machine}", "frostpoint job cancel {job}",
           "frostpoint backup now {machine} --wait"], status=409),
    _spec("UserErrorCrpReportedUserError", "user", False,
          "The platform refused the operation for a user reason.",
          ["The machine is being deleted or updated.", "A disk is detached."],
          ["frostpoint job show {job}"], status=400),
    _spec("UserErrorBcmDatasourceNotPresent", "user", False,
          "The machine is not actively protected.",
          ["Protection is stopped or paused.", "The machine was deleted."],
          ["frostpoint protect resume {machine}",
           "frostpoint protect enable {machine} --vault VAULT --policy POLICY"], status=400),
    _spec("UserErrorFsFreezeFailed", "user", True,
          "A mount point could not be frozen.",
          ["The filesystem does not support freezing.",
           "The freeze did not finish in time."],
          ["frostpoint vm exec {machine} -- cat /etc/frostpoint/vmbackup.json",
           "frostpoint backup now {machine} --wait"], status=400),
    _spec("UserErrorVmNotInDesirableState", "user", True,
          "The machine is in a state that allows no backup.",
          ["The machine is being created or deleted.",
           "A platform operation (start, stop, disk detach) is running: provisioning "
           "Updating until it ends."],
          ["frostpoint vm show {machine}  # wait until provisioning is Succeeded",
           "frostpoint backup now {machine}"], status=400),
    _spec("UserErrorInstantRpNotFound", "user", False,
          "The snapshot of this restore point no longer exists.",
          ["The instant restore point expired and was cleaned up."],
          ["frostpoint restore ... --source vault"], status=400),
    _spec("Pre-ScriptExecutionFailed", "user", True,
          "A pre-script failed.", ["The script exited non-zero."],
          ["frostpoint vm exec {machine} -- SCRIPT  # run it by hand: its output says why",
           "frostpoint vm exec {machine} -- cat /etc/frostpoint/vmbackup.json  # "
           "\"continueBackupOnFailure\": true backs up anyway, file-system consistent",
           "frostpoint job show {job}"], status=400),
    _spec("Post-ScriptExecutionFailed", "user", True,
          "A post-script failed.", ["The script exited non-zero."],
          ["frostpoint job show {job}"], status=400),
    _spec("Pre-ScriptNotFound", "user", False,
          "A pre-script was not found.", ["The path in vmbackup.json is wrong."],
          ["Fix preScriptLocation in /etc/frostpoint/vmbackup.json"], status=400),
    _spec("Post-ScriptNotFound", "user", False,
          "A post-script was not found.", ["The path in vmbackup.json is wrong."],
          ["Fix postScriptLocation in /etc/frostpoint/vmbackup.json"], status=400),
    _spec("InsufficientPermissionforPre-Script", "user", False,
          "A pre-script is not owned by root or is writable by others.",
          ["Wrong owner or mode."], ["chown root:root SCRIPT; chmod 700 SCRIPT"], status=400),
    _spec("InsufficientPermissionforPost-Script", "user", False,
          "A post-script is not owned by root or is writable by others.",
          ["Wrong owner or mode."], ["chown root:root SCRIPT; chmod 700 SCRIPT"], status=400),
    _spec("Pre-ScriptTimeout", "user", True,
          "A pre-script did not finish in time.", ["The script hangs or is slow."],
          ["Raise timeoutInSeconds in /etc/frostpoint/vmbackup.json"], status=400),
    _spec("Post-ScriptTimeout", "user", True,
          "A post-script did not finish in time.", ["The script hangs or is slow."],
          ["Raise timeoutInSeconds in /etc/frostpoint/vmbackup.json"], status=400),
    _spec("IncorrectJSONConfigFile", "user", False,
          "The pre/post script config file is not valid.",
          ["vmbackup.json is not valid JSON, not owned by root, or writable by group "
           "or others."],
          ["frostpoint vm exec {machine} -- cat /etc/frostpoint/vmbackup.json"], status=400),
    # Frostpoint's own start-up errors: the service refused to start, and made nothing.
    _spec("ServiceStartFailed", "user", False, "The backup service could not start.",
          ["Another frostpoint server already uses this data directory.",
           "The --listen address is malformed or already in use.",
           "The host lacks something the fabric needs (root, mkfs.xfs, ip)."],
          ["frostpoint server --data-dir OTHER_DIR",
           "frostpoint server --listen 127.0.0.1:FREE_PORT",
           "ss -ltnp"], status=400),
    _spec("UserErrorImmutableVault", "user", False,
          "The vault is immutable: no restore point may leave before its retention ends.",
          ["A delete (vault delete, rp delete, stop with delete data and its purge) would "
           "remove restore points that are still retained.",
           "A policy change would end the retention of restore points sooner.",
           "The vault's immutability is locked, which cannot be undone."],
          ["frostpoint rp list --machine {machine}  # see vault_expires_at",
           "frostpoint protect stop {machine}  # stop and keep the data instead",
           "frostpoint policy update POLICY --daily N  # lengthen, never shorten",
           "frostpoint vault immutability VAULT disable  # only while Enabled, not Locked"],
          status=409),
    _spec("UserErrorMachineRunning", "user", False,
          "The machine is running; replacing its disks needs it stopped.",
          ["restore disks --replace swaps the disks of a stopped machine only."],
          ["frostpoint vm stop {machine}",
           "frostpoint restore disks RP_ID --replace --stop"], status=409),
    _spec("RestoreReplaceRolledBack", "user", True,
          "Replacing the disks failed midway; the machine's disks were put back as they "
          "were (from the safety restore point) and it was started.",
          ["The restore point's vault copy is damaged or unreachable (the error's "
           "details name the cause).",
           "The scratch space beside the disks is full or failing."],
          ["frostpoint vault verify VAULT",
           "frostpoint restore disks RP_ID --replace --source instant",
           "frostpoint rp list --machine {machine}  # the safety restore point stays"],
          status=500),
    _spec("RestoreReplaceRollbackFailed", "internal", False,
          "Replacing the disks failed and putting the old disks back failed too; the "
          "machine is left stopped.",
          ["The scratch space or the disk pool failed while the disks were swapped."],
          ["frostpoint restore disks SAFETY_RP --replace  # the safety restore point",
           "frostpoint doctor {machine}"], status=500),
    _spec("VmExecTimedOut", "user", True,
          "The command run in the machine did not finish within its timeout; it was "
          "killed.",
          ["The command takes longer than the timeout, or waits for input.",
           "Something in the machine stopped it (SIGSTOP) or it is blocked on a frozen "
           "disk."],
          ["frostpoint vm exec {machine} -- sh -c 'COMMAND >/tmp/out 2>&1 &'  # longer "
           "than 300 s: in the background, then read /tmp/out",
           "frostpoint doctor {machine}  # a frozen disk shows there"], status=504),
    _spec("NotificationDeliveryFailed", "user", True,
          "A webhook target did not accept an event (no answer in time, or not 2xx).",
          ["The receiver is down or unreachable from the service.",
           "The receiver answered with an error (a wrong path, its signature check).",
           "The receiver took longer than the delivery timeout."],
          ["frostpoint notify test NAME", "frostpoint notify list"], status=502),
    # Frostpoint's own request errors (not backup failures).
    _spec("NotFound", "user", False, "The named object does not exist.",
          ["A typo in the name.", "It was deleted."], ["frostpoint vm list"], status=404),
    _spec("Conflict", "user", False, "The object already exists or is in use.",
          ["A name is taken.", "The object is referenced."], [], status=409),
    _spec("InvalidInput", "user", False, "The request is not valid.",
          ["A value is out of range or malformed."], ["frostpoint --help"], status=422),
    _spec("Unauthorized", "user", False, "The request carries no valid token.",
          ["The token file is missing or another service's."],
          ["Set FROSTPOINT_TOKEN or FROSTPOINT_DATA_DIR"], status=401),
    _spec("AuthorizationFailed", "user", False,
          "The token is valid but its role may not do this.",
          ["A reader token may only read (and not run doctor, which acts in the guest).",
           "An operator token may back up, cancel jobs and restore to a new machine or "
           "into DATA/restores, but not change or delete anything else.",
           "An operator's restore target is outside DATA/restores."],
          ["frostpoint token list",
           "frostpoint restore disks RP_ID --to DATA/restores/NAME",
           "frostpoint token create NAME --role admin  # run by an admin"], status=403),
    _spec("VaultDataCorrupt", "internal", False,
          "Vault data failed its integrity check.",
          ["A chunk or pack was damaged on storage."], ["frostpoint vault verify VAULT"],
          status=400),
    _spec("VaultKeyInvalid", "user", False,
          "A key file in the data directory is missing or damaged.",
          ["The key file was truncated or edited (a full disk, a bad copy of DATA/keys).",
           "DATA/keys was lost or restored from an older copy.",
           "A key export file is damaged or the passphrase is wrong."],
          ["frostpoint vault import VAULT --backend B --location L --key FILE",
           "restore DATA/keys from a backup of the data directory"], status=400),
    _spec("JobCancelled", "user", False, "The job was cancelled.",
          ["A user cancelled it."], [], status=400),
]}


@dataclass
class FrostpointError(Exception):
    """An error with a catalog code; the only kind shown to a user.

    FrostpointError(code, ...) makes an instance of the code's typed subclass when it
    has one (JobCancelled, NotFound, ...), whoever raises it: code that steers by a
    failure catches the type, and never compares code strings.
    """

    code: str
    detail: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __new__(cls, code: str, *_args: Any, **_kwargs: Any) -> FrostpointError:
        typed = _TYPED.get(code) if cls is FrostpointError else None
        return super().__new__(typed or cls)

    def __post_init__(self) -> None:
        if self.code not in CATALOG:
            raise ValueError(f"unknown error code {self.code}")
        Exception.__init__(self, f"{self.code}: {self.detail or self.spec.message}")

    @property
    def spec(self) -> ErrorSpec:
        return CATALOG[self.code]

    def to_dict(self, machine: str | None = None) -> dict[str, Any]:
        return error_dict(self.code, self.detail, self.details, machine)


def error_dict(code: str, detail: str = "", details: dict[str, Any] | None = None,
               machine: str | None = None) -> dict[str, Any]:
    spec = CATALOG[code]
    return {
        "code": code,
        "kind": spec.kind,
        "retryable": spec.retryable,
        "message": detail or spec.message,
        "causes": list(spec.causes),
        "actions": actions_for(code, list(spec.actions), detail or spec.message,
                               details or {}, machine),
        "details": details or {},
        "doc": spec.doc_link,
    }


_TYPED: dict[str, type[FrostpointError]] = {}


def _typed(code: str) -> Callable[[type[FrostpointError]], type[FrostpointError]]:
    def register(cls: type[FrostpointError]) -> type[FrostpointError]:
        _TYPED[code] = cls
        return cls
    return register


# The codes that steer control flow somewhere. Raise them as FrostpointError(code, ...)
# like any other; catch them by type.
@_typed("JobCancelled")
class JobCancelled(FrostpointError):
    pass


@_typed("NotFound")
class NotFound(FrostpointError):
    pass


@_typed("Unauthorized")
class Unauthorized(FrostpointError):
    pass


@_typed("VaultDataCorrupt")
class VaultDataCorrupt(FrostpointError):
    pass


@_typed("UserErrorGuestAgentStatusUnavailable")
class GuestAgentUnavailable(FrostpointError):
    pass
