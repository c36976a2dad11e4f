"""The per-recipient privacy budget, kept in sharing_budget_spend.

A release of D days of data with epsilon e per day costs D x e (sequential
composition over the days a person may appear on; delta adds up the same way).
The spend is written, under a per-recipient lock, before any object of the
release is, so a run killed half-way has over- rather than under-counted.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg2.extensions

from lethe.sharing.config import RecipientConfig


class SharingRefused(RuntimeError):
    """A release was not published; the message says why in plain words, with no personal data."""


class BudgetExceeded(SharingRefused):
    pass


def lock(cur: psycopg2.extensions.cursor, recipient: str) -> None:
    """One release per recipient at a time (held to the end of the transaction)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lethe.sharing:{recipient}",))


def cost(config: RecipientConfig, days: int) -> tuple[float, float]:
    if not config.noisy:
        return 0.0, 0.0
    assert config.epsilon is not None
    return config.epsilon * days, (config.delta or 0.0) * days


def spent(cur: psycopg2.extensions.cursor, config: RecipientConfig) -> float:
    """Epsilon spent by the recipient within its budget period (or ever)."""
    if config.budget_period_days is None:
        cur.execute("SELECT coalesce(sum(epsilon), 0) FROM sharing_budget_spend WHERE recipient = %s", (config.name,))
    else:
        cur.execute(
            "SELECT coalesce(sum(epsilon), 0) FROM sharing_budget_spend WHERE recipient = %s AND spent_at > now() - %s",
            (config.name, timedelta(days=config.budget_period_days)),
        )
    return float(cur.fetchone()[0])  # type: ignore[index]


def check(cur: psycopg2.extensions.cursor, config: RecipientConfig, days: int) -> float:
    """The epsilon this release costs; raise BudgetExceeded when it does not fit in what is left."""
    epsilon, _ = cost(config, days)
    if not config.noisy:
        return 0.0
    assert config.epsilon_budget is not None
    used = spent(cur, config)
    if used + epsilon > config.epsilon_budget + 1e-9:
        period = f"in the last {config.budget_period_days:g} days" if config.budget_period_days else "so far"
        raise BudgetExceeded(
            f"release refused for recipient {config.name!r}: it needs epsilon {epsilon:g} ({days} day(s) x "
            f"{config.epsilon:g}) but {used:g} of the budget {config.epsilon_budget:g} is spent {period}, "
            f"leaving {max(config.epsilon_budget - used, 0):g}; nothing was published. Raise epsilon_budget or "
            "lower epsilon for this recipient in the policy file, or wait for older spends to leave the period."
        )
    return epsilon


def record(cur: psycopg2.extensions.cursor, config: RecipientConfig, release_id: str, days: int) -> None:
    epsilon, delta = cost(config, days)
    if epsilon:
        cur.execute(
            "INSERT INTO sharing_budget_spend (recipient, release_id, epsilon, delta, days)"
            " VALUES (%s, %s, %s, %s, %s)",
            (config.name, release_id, epsilon, delta, days),
        )
