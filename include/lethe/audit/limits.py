"""How old the nightly work may be before the audit (and the compliance page) call it stale.

One place for both: compliance_audit's params default to these, and the page's freshness
badges judge each section by the same numbers, so the two never disagree.
"""

from __future__ import annotations

# A nightly retention rule whose last completed run is older than this has gone stale (a day plus slack).
STALE_AFTER_HOURS = 26.0
# Backups: the newest complete snapshot of each region must be younger than this (nightly plus slack).
RPO_HOURS = 26.0
# The restore drill runs when the last drill that passed is older than this (weekly).
RESTORE_DRILL_DAYS = 7.0
