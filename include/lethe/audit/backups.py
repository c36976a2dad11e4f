"""Checks over the cross-region backups, read from S3 as they are (not from the backup catalogue).

Per backup region:
- bucket_in_region: the backup bucket is in the region the policy names (GetBucketLocation). A custom
  endpoint that reports no region at all (SeaweedFS, the embedded server) is noted as such in the
  details, not failed: on AWS an empty answer means us-east-1 and is compared like any other;
- snapshot_within_rpo: the newest complete snapshot (one with a manifest) is younger than the
  recovery-point objective;
- manifest_mismatches: every object a retained manifest names exists, as the current version of its
  key, with the size the manifest gives, from one ListObjectsV2 request per 1,000 objects (no request
  per object); an object written since the last passed audit is read and its sha256 recomputed, as is
  the sample; the rest were read and verified by an earlier audit and have not been written since (S3
  sets LastModified on every write; propagation deletes a rewritten object's older versions, so
  deleting the current one leaves the key missing, not an old version in its place); a manifest that
  cannot be read (it, or an index object it names, changed or deleted outside Lethe) counts once, the
  key named in the details (`unreadable_manifests`), and its snapshot's objects are read as no
  manifest's;
- tombstones_not_applied: no retained snapshot still holds a row of an erased person (rows are
  matched by the keyed pseudonym each object carries, only in the subject buckets tombstones fall in);
- erased_mentions_left: no retained snapshot still names an erased person in other people's free
  text (spellings matched by the keyed pseudonyms of the tombstones' identifiers).

Both also cover what no manifest names: every noncurrent version under the snapshots prefix, and
every object of an incomplete snapshot (a killed backup), read in full on every audit; after a
propagation there are none, so this costs one listing per region.

Contents are read only where they can have changed since the last audit that passed the region: the
snapshots it did not see, objects written since it listed the bucket (by S3's own clock), objects a
tombstone erased since then can be in (and, when it left identifiers, every free-text object whose term
index may hold one of them, lethe.backup.term_index; every one without an index), plus a small random
sample of the rest, checked in full. The first audit reads everything.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from lethe.audit.limits import RPO_HOURS
from lethe.backup.mentions import MentionFinder, prefilter_of
from lethe.backup.term_index import Query, may_mention
from lethe.config import BACKUP_REGIONS, BUCKETS
from lethe.db import transaction
from lethe.quality import CheckResult, expect_counts

DEFAULT_RPO = timedelta(hours=RPO_HOURS)
# Objects read in full each night beyond those that changed, per region.
DEFAULT_SAMPLE = 8
# Slack between the database's clock (tombstones' erased_at) and S3's (the last audit's listing time).
CLOCK_SLACK = timedelta(minutes=15)
CHECKS = ("bucket_in_region", "snapshot_within_rpo", "manifest_mismatches", "tombstones_not_applied",
          "erased_mentions_left")  # fmt: skip


@dataclass
class Tombstones:
    erased_at: dict[str, datetime]  # subject pseudonym -> when it was erased
    identifiers_at: dict[str, datetime] = field(default_factory=dict)  # identifier pseudonym -> newest erasure
    prefilter: frozenset[str] | None = None  # their keyed prefilter terms (mentions.prefilter_of)

    def since(self, when: datetime | None) -> tuple[set[str], set[str]]:
        """Subjects erased at or after `when`, and the identifier pseudonyms those left."""
        if when is None:
            return set(self.erased_at), set(self.identifiers_at)
        return {p for p, at in self.erased_at.items() if at >= when}, {
            i for i, at in self.identifiers_at.items() if at >= when
        }


def tombstones(db_url: str) -> Tombstones:
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT subject_pseudonym, identifier_pseudonyms, erased_at, prefilter_pseudonyms FROM erasure_tombstones"
        )
        rows = cur.fetchall()
    found = Tombstones({p: at for p, _, at, _ in rows}, prefilter=prefilter_of((i, t) for _, i, _, t in rows))
    for _, ids, at, _ in rows:
        for i in ids or []:
            found.identifiers_at[i] = max(at, found.identifiers_at.get(i, at))
    return found


@dataclass(frozen=True)
class Baseline:
    listed_at: datetime  # S3's clock when that audit started reading the region
    snapshots: frozenset[str]  # the snapshots it audited


def last_passed(db_url: str, region: str, lookback: int = 30) -> Baseline | None:
    """What the latest audit that passed every backup check of this region saw."""
    with transaction(db_url) as cur:
        cur.execute("SELECT results FROM audit_runs ORDER BY audited_at DESC LIMIT %s", (lookback,))
        runs = [r for (r,) in cur.fetchall()]
    for results in runs:
        checks = [
            c
            for r in results or []
            if r.get("suite") == "backups"
            for c in r["checks"]
            if c["name"].endswith(f".{region}")
        ]
        if checks and all(c["success"] for c in checks):
            details = checks[0].get("details") or {}
            if details.get("listed_at") and "snapshot_ids" in details:
                return Baseline(datetime.fromisoformat(details["listed_at"]), frozenset(details["snapshot_ids"]))
    return None


def bucket_region(client: Any, bucket: str) -> tuple[str | None, datetime]:
    """The bucket's LocationConstraint (None when empty), and S3's clock when it answered (to compare
    with LastModified, not ours)."""
    answer = client.get_bucket_location(Bucket=bucket)
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    clock = parsedate_to_datetime(date) if date else datetime.now(UTC) - CLOCK_SLACK
    return answer.get("LocationConstraint") or None, clock


def region_matches(reported: str | None, region: str, custom_endpoint: bool) -> tuple[bool, str]:
    """(in the right region, what to report) for a bucket meant for `region`."""
    if reported is None and custom_endpoint and region != "us-east-1":
        return True, "not reported by this S3 server"
    # S3 reports us-east-1, its original region, as no LocationConstraint at all.
    location = reported or "us-east-1"
    return location == region, location


def listing(client: Any, bucket: str, prefixes: list[str]) -> dict[str, dict[str, Any]]:
    """Key -> its current version's Size, ETag and LastModified, from ListObjectsV2 pages of 1,000 keys
    (a key behind a delete marker has no current version and is not listed)."""
    current: dict[str, dict[str, Any]] = {}
    for prefix in prefixes:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                current[obj["Key"]] = obj
    return current


def audit_region(
    region: str,
    endpoint_url: str | None,
    found: Tombstones,
    now: datetime,
    rpo: timedelta,
    finder: MentionFinder,
    since: Baseline | None = None,
    sample: int = DEFAULT_SAMPLE,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Counts (zero when the region is fine) and details for one region; `since`: the last passed audit."""
    import pyarrow

    from lethe.backup import frames, layout, store

    try:
        client = store.region_client(region, layout.region_endpoint(region, endpoint_url))
        bucket = BUCKETS.backup(region)
        reported, listed_at = bucket_region(client, bucket)
        custom = "amazonaws.com" not in (client.meta.endpoint_url or "")
        in_region, location = region_matches(reported, region, custom)
        manifests, unreadable = _readable_manifests(client, bucket)
    except Exception as exc:  # an unreachable region fails its checks; the other region is still audited
        return {name: 1 for name in CHECKS}, {"unreachable": type(exc).__name__}
    newest = max((datetime.fromisoformat(m.created_at) for m in manifests), default=None)
    age_hours = round((now - newest).total_seconds() / 3600, 2) if newest else None
    new_erased, new_identifiers = found.since(since.listed_at - CLOCK_SLACK if since else None)
    erased = set(found.erased_at)

    objects = [(m, entry, obj) for m in manifests for entry in m.tables.values() for obj in entry.objects]
    versions = listing(client, bucket, [layout.snapshot_prefix(m.snapshot_id) for m in manifests])

    mismatched = len(unreadable)  # a snapshot whose manifest cannot be read: its objects are read as stale below
    reasons = {"written": 0, "new_tombstones": 0, "new_mentions": 0, "sample": 0}
    to_read: dict[str, tuple[Any, Any]] = {}  # key -> (table entry, object entry)
    rest = []
    new_suspects = {obj.key for m in manifests for _, _, obj, _ in m.holding(new_erased)}
    new_terms = Query.of(new_identifiers)
    for m, entry, obj in objects:
        attr = versions.get(obj.key)
        if attr is None or attr.get("Size") != obj.bytes:
            mismatched += 1
            continue
        if since is None or m.snapshot_id not in since.snapshots or attr["LastModified"] >= since.listed_at:
            reason = "written"
        elif obj.key in new_suspects:
            reason = "new_tombstones"
        elif new_identifiers and entry.free_text and may_mention(obj.term_index, new_terms):
            reason = "new_mentions"
        else:
            rest.append((entry, obj))
            continue
        reasons[reason] += 1
        to_read[obj.key] = (entry, obj)
    # Unpredictable, so nobody can tell which unchanged objects tonight's audit will read.
    for entry, obj in random.SystemRandom().sample(rest, min(sample, len(rest))):
        reasons["sample"] += 1
        to_read[obj.key] = (entry, obj)

    named: dict[str, list[tuple[int, str]]] = {}
    for _, _, obj in objects:
        named.setdefault(obj.key, []).append((obj.bytes, obj.sha256))
    suspects: dict[str, set[str]] = {}
    for m in manifests:
        for _, _, obj, pseudonyms in m.holding(erased):
            suspects.setdefault(obj.key, set()).update(pseudonyms)
    left: set[str] = set()
    mentions = 0
    bytes_read = 0
    stale = _stale_versions(client, bucket, {m.snapshot_id for m in manifests})
    for version in stale:  # no manifest vouches for these: every row and every text column is read
        data = bytes(
            client.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])["Body"].read()
        )
        bytes_read += len(data)
        if not version["Key"].endswith(".parquet"):
            continue
        try:
            rows = frames.from_parquet(data)
        except pyarrow.ArrowInvalid:  # an old version nobody vouches for and nobody can read: it may hold anyone
            mismatched += 1
            continue
        if layout.SUBJECT_COLUMN in rows.column_names:
            left.update(frames.erase_subjects(rows, erased, "delete", {})[1].per_subject)
        texts = [
            f.name for f in rows.schema if f.name != layout.SUBJECT_COLUMN and str(f.type) in ("string", "large_string")
        ]
        mentions += finder.redact_columns(rows, texts)[1] if finder.identifier_pseudonyms else 0
    for key, (entry, obj) in to_read.items():
        try:
            data = store.get(client, bucket, key)
        except Exception:  # gone since its attributes were read
            mismatched += 1
            continue
        bytes_read += len(data)
        digest = hashlib.sha256(data).hexdigest()
        # An incremental snapshot's object is named by every later manifest: read once, checked against each.
        # (a size the listing already showed wrong was counted there)
        wrong = sum(1 for size, sha in named[key] if size == obj.bytes and digest != sha)
        wrong = wrong or int(len(data) != obj.bytes)
        if wrong:
            mismatched += wrong
            continue
        search_mentions = bool(entry.free_text and finder.identifier_pseudonyms)
        if key not in suspects and not search_mentions:
            continue
        rows = frames.from_parquet(data)
        if key in suspects:
            left.update(frames.erase_subjects(rows, suspects[key], "delete", {})[1].per_subject)
        if search_mentions:
            mentions += finder.redact_columns(rows, entry.free_text)[1]
    counts = {
        "bucket_in_region": 0 if in_region else 1,
        "snapshot_within_rpo": 0 if newest is not None and now - newest <= rpo else 1,
        "manifest_mismatches": mismatched,
        "tombstones_not_applied": len(left),
        "erased_mentions_left": mentions,
    }
    details = {
        "bucket_region": location,
        "snapshots": len(manifests),
        "newest_age_hours": age_hours,
        "rpo_hours": rpo.total_seconds() / 3600,
        "objects": len(objects),
        "bytes": sum(obj.bytes for _, _, obj in objects),
        "objects_read": len(to_read),
        "bytes_read": bytes_read,
        "read_because": reasons,
        "old_versions_read": len(stale),  # noncurrent versions and objects of incomplete snapshots
        "since": since.listed_at.isoformat() if since else None,
        "listed_at": listed_at.isoformat(),
        "snapshot_ids": [m.snapshot_id for m in manifests],
        "unreadable_manifests": unreadable,
        "tombstones": len(erased),
    }
    return counts, details


def _readable_manifests(client: Any, bucket: str) -> tuple[list[Any], dict[str, str]]:
    """The complete snapshots' manifests, oldest first, and, for each one that cannot be read (its manifest or an
    index object it names changed or deleted outside Lethe), why, naming the key. Such a snapshot is not one a
    manifest vouches for: its objects are read in full (_stale_versions), the rest of the region audited as ever."""
    from lethe.backup import manifest, store

    indexes = manifest.IndexReader(client, bucket)
    found, unreadable = [], {}
    for sid in manifest.complete_snapshot_ids(client, bucket):
        try:
            found.append(manifest.read(client, bucket, sid, indexes))
        except (ValueError, store.MissingObject) as exc:
            unreadable[sid] = str(exc)
    return found, unreadable


def _stale_versions(client: Any, bucket: str, complete: set[str]) -> list[dict[str, Any]]:
    """Object versions no manifest vouches for: noncurrent ones, and every one of a snapshot without a manifest."""
    from lethe.backup import layout, store

    found = []
    for v in store.versions(client, bucket, layout.SNAPSHOT_PREFIX):
        if v["DeleteMarker"]:
            continue
        sid = v["Key"][len(layout.SNAPSHOT_PREFIX) :].split("/", 1)[0]
        if not v["IsLatest"] or sid not in complete:
            found.append(v)
    return found


def check_backups(
    db_url: str,
    endpoint_url: str | None,
    key: bytes,
    now: datetime,
    rpo: timedelta = DEFAULT_RPO,
    sample: int = DEFAULT_SAMPLE,
) -> CheckResult:
    found = tombstones(db_url)
    finder = MentionFinder(key, frozenset(found.identifiers_at), found.prefilter)
    counts: dict[str, int] = {}
    details: dict[str, Any] = {}
    for region in BACKUP_REGIONS:
        since = last_passed(db_url, region)
        region_counts, region_details = audit_region(region, endpoint_url, found, now, rpo, finder, since, sample)
        for name, n in region_counts.items():
            counts[f"{name}.{region}"] = n
            details[f"{name}.{region}"] = region_details
    return expect_counts("backups", counts, details=details)
