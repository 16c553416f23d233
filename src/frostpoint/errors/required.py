"""The codes the product must implement: the list in the shared failure catalog
(ERRORS.md, outside this repository), copied here so that tests/test_errors.py checks
the catalog against the repository alone. Add a code here when the shared list grows."""

from __future__ import annotations

REQUIRED_CODES: frozenset[str] = frozenset({
    # From the agent and extension troubleshooting guide.
    "UserErrorGuestAgentStatusUnavailable",
    "GuestAgentSnapshotTaskStatusError",
    "UserErrorVmProvisioningStateFailed",
    "UserErrorRpCollectionLimitReached",
    "UserErrorKeyvaultPermissionsNotConfigured",
    "ExtensionSnapshotFailedNoNetwork",
    "ExtensionOperationFailedForManagedDisks",
    "BackUpOperationFailed",
    "BackUpOperationFailedV2",
    "UserErrorUnsupportedDiskSize",
    "UserErrorBackupOperationInProgress",
    "UserErrorCrpReportedUserError",
    "UserErrorBcmDatasourceNotPresent",
    "UserErrorFsFreezeFailed",
    "UserErrorInstantRpNotFound",
    "UserErrorVmNotInDesirableState",
    "IncorrectJSONConfigFile",
    # Pre- and post-scripts of the application-consistent backup.
    "Pre-ScriptNotFound",
    "Pre-ScriptTimeout",
    "Pre-ScriptExecutionFailed",
    "Post-ScriptNotFound",
    "Post-ScriptTimeout",
    "Post-ScriptExecutionFailed",
    "InsufficientPermissionforPre-Script",
    "InsufficientPermissionforPost-Script",
})
