"""One privacy budget per audience and data day, for life (table sharing_audience_days).

A recipient names its audience (who can see its releases). A data day is
released to an audience at most once, under any recipient name: renaming a
recipient gets it only days the audience has not had, so two releases of the
same day can never be subtracted. A recipient name stays with the audience of
its first release (sharing_recipient_audiences). Noisy releases spend epsilon
per person-day; what the audience `public` receives every audience has too,
so a day's public spend counts against every audience's budget for that day.
Both tables are append-only (a trigger refuses UPDATE, DELETE and TRUNCATE)
and are written, under a per-audience lock, before any object of a release.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg2.extensions

from lethe.sharing.config import RecipientConfig

PUBLIC = "public"


class SharingRefused(RuntimeError):
    """A release was not published; the message says why in plain words, with no personal data."""


class BudgetExceeded(SharingRefused):
    pass


class AlreadyReleased(SharingRefused):
    pass


def lock(cur: psycopg2.extensions.cursor, audience: str) -> None:
    """One release per audience at a time (held to the end of the transaction)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lethe.sharing.audience:{audience}",))


def days(start: datetime, end: datetime) -> list[date]:
    return [start.date() + timedelta(days=i) for i in range((end - start).days)]


def cost(config: RecipientConfig, n_days: int) -> tuple[float, float]:
    if not config.noisy:
        return 0.0, 0.0
    assert config.epsilon is not None
    return config.epsilon * n_days, (config.delta or 0.0) * n_days


def released_until(cur: psycopg2.extensions.cursor, audience: str) -> datetime | None:
    """00:00 UTC after the last data day the audience received."""
    cur.execute("SELECT max(day) FROM sharing_audience_days WHERE audience = %s", (audience,))
    row = cur.fetchone()
    if not row or row[0] is None:
        return None
    last: date = row[0]
    return datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)


def _span(found: list[date]) -> str:
    return found[0].isoformat() + (f" to {found[-1].isoformat()}" if len(found) > 1 else "")


def check(cur: psycopg2.extensions.cursor, config: RecipientConfig, start: datetime, end: datetime) -> float:
    """The epsilon this release spends; raise SharingRefused when the audience may not receive it."""
    who = f"release refused for recipient {config.name!r}"
    cur.execute("SELECT audience FROM sharing_recipient_audiences WHERE recipient = %s", (config.name,))
    row = cur.fetchone()
    if row and row[0] != config.audience:
        raise AlreadyReleased(
            f"{who}: it belongs to audience {row[0]!r} since its first release and cannot move to "
            f"{config.audience!r}; nothing was published. Name a new recipient for the new audience."
        )
    window = days(start, end)
    cur.execute(
        "SELECT day FROM sharing_audience_days WHERE audience = %s AND day = ANY(%s) ORDER BY day",
        (config.audience, window),
    )
    again = [r[0] for r in cur.fetchall()]
    if again:
        raise AlreadyReleased(
            f"{who}: audience {config.audience!r} already received data day(s) {_span(again)}; a data day is "
            "released to an audience once, under any recipient name; nothing was published"
        )
    epsilon, _ = cost(config, len(window))
    if not config.noisy:
        return 0.0
    assert config.epsilon is not None and config.delta is not None
    budget_eps, budget_delta = config.audience_epsilon, config.audience_delta
    if budget_eps is None or budget_delta is None:
        raise BudgetExceeded(f"{who}: audience {config.audience!r} has no epsilon_per_day and delta_per_day")
    others: dict[date, tuple[float, float]] = {}
    if config.audience != PUBLIC:  # the public's releases are this audience's too
        cur.execute(
            "SELECT day, epsilon, delta FROM sharing_audience_days WHERE audience = %s AND day = ANY(%s)",
            (PUBLIC, window),
        )
        others = {d: (e, dl) for d, e, dl in cur.fetchall()}
    over = [
        d
        for d in window
        if others.get(d, (0.0, 0.0))[0] + config.epsilon > budget_eps + 1e-9
        or others.get(d, (0.0, 0.0))[1] + config.delta > budget_delta * (1 + 1e-9)
    ]
    if over:
        raise BudgetExceeded(
            f"{who}: it needs epsilon {config.epsilon:g} and delta {config.delta:g} per day, but on data day(s) "
            f"{_span(over)} audience {config.audience!r} has less left of its budget of {budget_eps:g} / "
            f"{budget_delta:g} per day (the public's releases count for every audience); nothing was published"
        )
    return epsilon


def record(
    cur: psycopg2.extensions.cursor, config: RecipientConfig, release_id: str, start: datetime, end: datetime
) -> None:
    """Spend the budget of every day of the window (the primary key refuses a day twice)."""
    epsilon, delta = (config.epsilon or 0.0, config.delta or 0.0) if config.noisy else (0.0, 0.0)
    cur.execute(
        "INSERT INTO sharing_recipient_audiences (recipient, audience) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (config.name, config.audience),
    )
    for day in days(start, end):
        cur.execute(
            "INSERT INTO sharing_audience_days (audience, day, recipient, release_id, epsilon, delta)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (config.audience, day, config.name, release_id, epsilon, delta),
        )
