"""What each compliance_audit check means and what to do when it fails: the one copy of these texts.

compliance_audit's doc_md renders them as its "When it fails" list and the Privacy compliance
page shows them beside each check. Patterns match `suite.check` names (fnmatch); the first match wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

DOC_SECTION = "docs/audit.md#when-it-fails"


@dataclass(frozen=True)
class Entry:
    pattern: str  # suite.check, fnmatch style; shown as the check's name in the runbook
    meaning: str  # one line: what a failure says
    action: str  # what to do about it


ENTRIES: tuple[Entry, ...] = (
    Entry(
        "*.suite_completed",
        "That suite's task itself errored (database or S3 unreachable), so its checks did not run.",
        "Fix the connection named in its log and clear the task.",
    ),
    Entry(
        "retention.expired_rows.*",
        "Rows that the rule's last completed retention_nightly run should have removed are still there "
        "(judged as of that run's cutoff, read from the ledger); the check names the table and column.",
        "Rows were re-created or the run skipped them: rerun `retention_nightly` and read its post-conditions.",
    ),
    Entry(
        "retention.stale.*",
        "The rule has not completed a (non-dry) run within `stale_after_hours` (default 26) of the audit.",
        "`retention_nightly` is paused, failing, or the rule is new: check its runs, fix and run it.",
    ),
    Entry(
        "legal_holds.held_rows_removed",
        "Rows of a person under an active legal hold were deleted since the last audit.",
        "Stop the deleting DAGs, find the deletion in the ledger and restore the rows from a backup (`lethe restore`).",
    ),
    Entry(
        "erasure_residue.*",
        "Something of an erased person is still in the primary (an erasure did not reach every table).",
        "Rerun `subject_erasure` for the open request, or look for rows re-created by the application.",
    ),
    Entry(
        "erasure_residue_scan.*",
        "An erased person is still written somewhere by value (another person's row, an anonymous log, "
        "a column the plan does not know); the check names the table and column.",
        "Find who writes it back (the application, a restore); mask the column and classify it in the policy. "
        "A new erasure of the same person reports `already_erased` and does not sweep again.",
    ),
    Entry(
        "erasure_deadlines.overdue_erasure_requests",
        "An open erasure request is past its due date.",
        "Trigger `subject_erasure` (batch mode) now.",
    ),
    Entry(
        "backups.snapshot_within_rpo.*",
        "No complete snapshot in that region is younger than the recovery-point objective.",
        "`backup_nightly` did not complete there: check its run and the region's endpoint "
        "(the details say `unreachable` when S3 did not answer).",
    ),
    Entry(
        "backups.manifest_mismatches.*",
        "An object a snapshot manifest names was changed or removed outside Lethe.",
        "Take a fresh snapshot (`backup_nightly`) and investigate the bucket's access log.",
    ),
    Entry(
        "backups.bucket_in_region.*",
        "The backup bucket is not in the region the policy names.",
        "Move it: its snapshots are outside the places the policy allows.",
    ),
    Entry(
        "backups.tombstones_not_applied.*",
        "A retained snapshot in that region still holds a row of an erased person.",
        "Run `backup_erasure_propagation`; do not restore from that region's snapshots until this passes.",
    ),
    Entry(
        "backups.erased_mentions_left.*",
        "A retained snapshot in that region still names an erased person in others' free text.",
        "Run `backup_erasure_propagation`; do not restore from that region's snapshots until this passes.",
    ),
    Entry(
        "restore_drill.skipped",
        "Not a failure: the last restore drill passed less than `restore_drill_days` ago (the check says when).",
        "Nothing; trigger compliance_audit with `restore_drill_days` 0 to drill now.",
    ),
    Entry(
        "restore_drill.snapshots_missing",
        "The drilled region has no complete snapshot to restore.",
        "Run `backup_nightly` and check its run in that region.",
    ),
    Entry(
        "restore_drill.restore_failed.*",
        "That snapshot did not restore (checksum, load or verification); the details give the restore's reason.",
        "Reproduce with `lethe restore --snapshot ID --region R --target NAME`; do not rely on that snapshot.",
    ),
    Entry(
        "restore_drill.erased_*",
        "A restore of that snapshot brings an erased person back (by subject link or by value).",
        "Run `backup_erasure_propagation`, then drill again (`restore_drill_days` 0); until it passes, "
        "restore only with `lethe restore`, which replays the live primary's tombstones.",
    ),
    Entry(
        "restore_drill.*",
        "A restore of that snapshot has rows whose foreign key finds no parent, or lost a foreign key "
        "of the primary; the details name the keys.",
        "Run `backup_erasure_propagation` (it cuts kept rows' links as the primary did) and drill again.",
    ),
    Entry(
        "shares.*",
        "A published release no longer passes the release gate (e.g. the policy's thresholds were raised).",
        "Withdraw it with `lethe sharing` and rerun `usage_sharing`.",
    ),
    Entry(
        "ledger.ledger_chain_broken",
        "The ledger was altered outside Lethe; the check's details name the first broken entry.",
        "Treat as a security incident.",
    ),
    Entry(
        "ledger.ledger_tail_missing",
        "Entries the evidence bucket's anchors vouch for were removed (the ledger truncated or its tail deleted).",
        "Treat as a security incident; the details give the lowest missing position; check the grants.",
    ),
)


def explain(suite: str, check: str) -> Entry | None:
    """The runbook entry of one check, or None for a check the runbook does not know."""
    name = f"{suite}.{check}"
    return next((e for e in ENTRIES if fnmatchcase(name, e.pattern)), None)


def markdown() -> str:
    """The runbook as a Markdown list (compliance_audit's doc_md)."""
    return "\n".join(f"- `{e.pattern.replace('*', '<…>')}`: {e.meaning} {e.action}" for e in ENTRIES)
