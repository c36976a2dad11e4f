"""Recipient settings as the sharing pipeline and the release gate use them.

They come from the policy file's `sharing:` section (lethe.policy.model.Sharing);
a release's manifest carries the same settings, so the gate can be re-run on a
published release with exactly the settings it was made under.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from lethe.db import ConfigurationError

DIMENSIONS = ("feature", "region", "device_type", "browser_family")
ALL = "all"  # the value of a dimension a recipient does not receive


@dataclass(frozen=True)
class RecipientConfig:
    name: str
    k: int = 10
    dimensions: tuple[str, ...] = DIMENSIONS
    mechanism: str = "none"  # none | laplace | gaussian
    epsilon: float | None = None  # per day of data in a release
    delta: float | None = None
    epsilon_budget: float | None = None
    budget_period_days: float | None = None  # rolling window of the budget; None: the recipient's lifetime
    first_window_days: int = 7
    max_events_per_cell: int = 50
    max_cells_per_day: int = 20
    max_duration_ms: int = 4 * 3600 * 1000
    anonymous_visitors: str = "by_visitor_id"
    description: str = ""

    @property
    def noisy(self) -> bool:
        return self.mechanism != "none"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dimensions"] = list(self.dimensions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipientConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(f"unknown recipient settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "dimensions" in values:
            values["dimensions"] = tuple(values["dimensions"])
        return cls(**values)


def recipients(policy: Any = None, *, only: str | None = None, include_disabled: bool = False) -> list[RecipientConfig]:
    """The recipients of the policy file (or of `policy`), in file order."""
    from lethe.policy import load_policy

    policy = policy or load_policy()
    sharing = policy.sharing
    out = []
    for name, r in sharing.recipients.items():
        if only is not None and name != only:
            continue
        if not r.enabled and not include_disabled and only is None:
            continue
        period = r.budget_period.to_timedelta() if r.budget_period else None
        out.append(
            RecipientConfig(
                name=name,
                k=r.k,
                dimensions=tuple(r.dimensions),
                mechanism=r.mechanism,
                epsilon=r.epsilon,
                delta=r.delta,
                epsilon_budget=r.epsilon_budget,
                budget_period_days=period / timedelta(days=1) if period else None,
                first_window_days=r.first_window_days,
                max_events_per_cell=r.max_events_per_cell or sharing.max_events_per_cell,
                max_cells_per_day=r.max_cells_per_day or sharing.max_cells_per_day,
                max_duration_ms=sharing.max_duration_ms,
                anonymous_visitors=sharing.anonymous_visitors,
                description=r.description,
            )
        )
    if only is not None and not out:
        known = ", ".join(sharing.recipients) or "none"
        raise ConfigurationError(f"no sharing recipient {only!r} in the policy file (recipients: {known})")
    return out
