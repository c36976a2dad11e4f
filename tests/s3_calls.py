"""Every S3 operation Lethe's code makes, recorded from botocore's events, checked against the IAM policy.

The recorder hooks `before-parameter-build.s3` on boto3's default session (every client of
lethe.storage.s3_client comes from it), so it sees the real calls with their real parameters.
A call counts as Lethe's when a frame of the `lethe` package is on its stack, unless it is
local-stack provisioning (`lethe.storage.ensure_buckets`, `lethe.testing`): docs/deployment.md
says buckets are made by infrastructure code on AWS. Each call is turned into the IAM actions
AWS authorises it by (its own table here, from AWS's "Actions, resources and condition keys for
Amazon S3"), and each action must be allowed by a statement of the policy in docs/deployment.md
on the bucket's ARN (bucket-level actions) or `<bucket>/*` (object-level ones).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPLOYMENT_DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
PROVISIONING = {("lethe.storage", "ensure_buckets")}

# operation -> IAM action, for operations that act on the bucket itself.
BUCKET_ACTIONS = {
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "GetBucketLocation": "s3:GetBucketLocation",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "CreateBucket": "s3:CreateBucket",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
}


@dataclass(frozen=True)
class Grant:
    action: str
    bucket: str
    object_level: bool

    @property
    def arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}" + ("/*" if self.object_level else "")


def iam_actions(operation: str, params: dict[str, Any]) -> list[tuple[str, bool]]:
    """(action, object-level?) pairs AWS checks for one call."""
    if operation in BUCKET_ACTIONS:
        return [(BUCKET_ACTIONS[operation], False)]
    versioned = "VersionId" in params
    if operation in ("GetObject", "HeadObject"):
        return [("s3:GetObjectVersion" if versioned else "s3:GetObject", True)]
    if operation == "DeleteObject":
        return [("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject", True)]
    if operation == "DeleteObjects":
        objects = params.get("Delete", {}).get("Objects", [])
        return sorted({("s3:DeleteObjectVersion" if "VersionId" in o else "s3:DeleteObject", True) for o in objects})
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        extra = [("s3:PutObjectRetention", True)] if "ObjectLockMode" in params else []
        return [("s3:PutObject", True), *extra]
    if operation == "GetObjectAttributes":
        suffix = "Version" if versioned else ""
        return [(f"s3:GetObject{suffix}", True), (f"s3:GetObject{suffix}Attributes", True)]
    if operation == "CopyObject":  # on the target; the source's s3:GetObject is recorded by Recorder._record
        tagging = [("s3:PutObjectTagging", True)] if params.get("TaggingDirective", "COPY") == "COPY" else []
        extra = [("s3:PutObjectRetention", True)] if "ObjectLockMode" in params else []
        return [("s3:PutObject", True), *tagging, *extra]
    if operation in ("PutObjectRetention", "GetObjectRetention", "AbortMultipartUpload"):
        return [(f"s3:{operation}", True)]
    # Reported at the end of the run (never raised here: that would fail the call under test).
    return [(f"unmapped operation {operation}: give it its IAM actions in tests/s3_calls.py", True)]


class Recorder:
    def __init__(self) -> None:
        self.calls: set[tuple[str, str, str]] = set()  # (operation, bucket, caller)
        self.grants: dict[Grant, str] = {}  # grant -> one caller that needed it
        self._lock = threading.Lock()

    def install(self) -> None:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("before-parameter-build.s3", self._record)  # type: ignore[union-attr]

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        caller = _lethe_caller(sys._getframe(1))
        bucket = params.get("Bucket")
        if caller is None or not bucket:
            return
        from lethe.config import BUCKETS

        names = BUCKETS.all()
        if bucket not in names:  # a test's own bucket
            return
        documented = "lethe" + bucket[len(BUCKETS.prefix) :]  # the policy names the default prefix
        with self._lock:
            self.calls.add((model.name, documented, caller))
            for action, object_level in iam_actions(model.name, params):
                self.grants.setdefault(Grant(action, documented, object_level), f"{model.name} by {caller}")
            source = params.get("CopySource")
            if model.name == "CopyObject" and isinstance(source, dict) and source.get("Bucket") in names:
                # AWS authorises a copy's read on the source object (and its tags when they are copied).
                origin = "lethe" + source["Bucket"][len(BUCKETS.prefix) :]
                reads = ["s3:GetObjectVersion" if "VersionId" in source else "s3:GetObject"]
                if params.get("TaggingDirective", "COPY") == "COPY":
                    reads.append("s3:GetObjectTagging")
                for action in reads:
                    self.grants.setdefault(Grant(action, origin, True), f"CopyObject by {caller}")

    def ungranted(self, policy: dict[str, Any]) -> list[str]:
        return sorted(f"{g.action} on {g.arn} ({why})" for g, why in self.grants.items() if not allows(policy, g))


def _lethe_caller(frame: Any) -> str | None:
    """The innermost frame of the lethe package on the stack, or None (a test's own call, or provisioning)."""
    caller = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "lethe.testing" or (module, frame.f_code.co_name) in PROVISIONING:
            return None
        if caller is None and (module == "lethe" or module.startswith("lethe.")):
            caller = f"{module}.{frame.f_code.co_name}"
        frame = frame.f_back
    return caller


def documented_policy() -> dict[str, Any]:
    """The least-privilege policy of docs/deployment.md (its first ```json block after the heading)."""
    text = DEPLOYMENT_DOC.read_text()
    match = re.search(r"Least-privilege policy.*?```json\n(.*?)```", text, re.S)
    assert match, f"{DEPLOYMENT_DOC}: no least-privilege policy block"
    return json.loads(match.group(1))


def allows(policy: dict[str, Any], grant: Grant) -> bool:
    for statement in policy["Statement"]:
        if statement.get("Effect") != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if any(fnmatch.fnmatchcase(grant.action, a) for a in actions) and any(
            fnmatch.fnmatchcase(grant.arn, r) for r in resources
        ):
            return True
    return False


RECORDER = Recorder()
