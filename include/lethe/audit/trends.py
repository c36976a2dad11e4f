"""The series behind the compliance page's charts, read from what the DAGs recorded (counts only).

- rows purged per night per retention rule (the ledger's non-dry `retention` entries);
- erasures completed per week, on time or after their deadline (erasure_requests);
- backup propagation lag per region at the end of each day (tombstones and when each region applied them).
Days and weeks are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import psycopg2.extensions

from lethe.config import BACKUP_REGIONS

DAYS = 30
WEEKS = 12


def _days(now: datetime, days: int) -> list[date]:
    today = now.astimezone(UTC).date()
    return [today - timedelta(days=n) for n in range(days - 1, -1, -1)]


@dataclass
class Series:
    """One line or row of bars: a value per x label (a day or a week), oldest first."""

    name: str
    points: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(v for _, v in self.points if v)


def purged_per_night(cur: psycopg2.extensions.cursor, now: datetime, days: int = DAYS) -> list[Series]:
    """Per retention rule that purged anything in the last `days` UTC days: rows removed or anonymised per day."""
    axis = _days(now, days)
    cur.execute(
        """
        SELECT payload->>'rule', (recorded_at AT TIME ZONE 'UTC')::date,
               sum(coalesce((payload->'counts'->>'done')::bigint, (payload->'counts'->>'deleted')::bigint, 0))
        FROM ledger
        WHERE kind = 'retention' AND NOT coalesce((payload->>'dry_run')::boolean, false) AND recorded_at >= %s
        GROUP BY 1, 2
        """,
        (datetime.combine(axis[0], time(), UTC),),
    )
    by_rule: dict[str, dict[date, float]] = {}
    for rule, day, rows in cur.fetchall():
        by_rule.setdefault(rule, {})[day] = float(rows)
    return [
        Series(rule, [(d.isoformat(), by_rule[rule].get(d, 0.0)) for d in axis])
        for rule in sorted(by_rule)
        if any(by_rule[rule].values())
    ]


def erasures_per_week(cur: psycopg2.extensions.cursor, now: datetime, weeks: int = WEEKS) -> list[Series]:
    """Erasures closed per ISO week (Monday, UTC): within their deadline, and after it. Dry runs and
    rejected requests are not erasures."""
    monday = now.astimezone(UTC).date() - timedelta(days=now.astimezone(UTC).weekday())
    axis = [monday - timedelta(weeks=n) for n in range(weeks - 1, -1, -1)]
    cur.execute(
        """
        SELECT date_trunc('week', completed_at AT TIME ZONE 'UTC')::date,
               count(*) FILTER (WHERE completed_at <= due_at), count(*) FILTER (WHERE completed_at > due_at)
        FROM erasure_requests
        WHERE completed_at >= %s AND status NOT IN ('dry_run', 'rejected')
        GROUP BY 1
        """,
        (datetime.combine(axis[0], time(), UTC),),
    )
    got = {week: (float(on_time), float(late)) for week, on_time, late in cur.fetchall()}
    return [
        Series("within deadline", [(w.isoformat(), got.get(w, (0.0, 0.0))[0]) for w in axis]),
        Series("after deadline", [(w.isoformat(), got.get(w, (0.0, 0.0))[1]) for w in axis]),
    ]


def lag_per_region(cur: psycopg2.extensions.cursor, now: datetime, days: int = DAYS) -> list[Series]:
    """Per backup region, at the end of each UTC day (now, for today): hours since the oldest erasure then
    recorded but not yet applied to every retained snapshot of the region; 0 when none was waiting."""
    cur.execute("SELECT to_regclass('backup_propagation_status') IS NOT NULL")
    if not cur.fetchone()[0]:  # type: ignore[index]
        return []
    axis = _days(now, days)
    ends = [min(datetime.combine(d + timedelta(days=1), time(), UTC), now) for d in axis]
    cur.execute(
        """
        SELECT r.region, e.at,
               extract(epoch FROM e.at - (
                   SELECT min(t.erased_at) FROM erasure_tombstones t
                   LEFT JOIN backup_propagation_status s
                     ON s.subject_pseudonym = t.subject_pseudonym AND s.region = r.region
                   WHERE t.erased_at < e.at
                     AND NOT (s.status = 'applied' AND coalesce(s.applied_at, '-infinity') <= e.at)
               )) / 3600
        FROM unnest(%s::text[]) AS r(region), unnest(%s::timestamptz[]) AS e(at)
        """,
        (list(BACKUP_REGIONS), ends),
    )
    got = {(region, at): lag for region, at, lag in cur.fetchall()}
    return [
        Series(
            region, [(d.isoformat(), float(got.get((region, end)) or 0.0)) for d, end in zip(axis, ends, strict=True)]
        )
        for region in BACKUP_REGIONS
    ]
