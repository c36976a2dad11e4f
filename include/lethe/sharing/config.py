"""Recipient settings as the sharing pipeline and the release gate use them.

They come from the policy file's `sharing:` section (lethe.policy.model.Sharing);
a release's manifest carries the same settings, so the gate can be re-run on a
published release with exactly the settings it was made under.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lethe.db import ConfigurationError

DIMENSIONS = ("feature", "region", "device_type", "browser_family")
ALL = "all"  # the value of a dimension a recipient does not receive
RETIRED = {"epsilon_budget", "budget_period_days"}  # settings of older manifests (a rolling per-recipient budget)


@dataclass(frozen=True)
class RecipientConfig:
    name: str
    audience: str = ""  # the empty name only in tests of one module; the policy always names one
    k: int = 10
    dimensions: tuple[str, ...] = DIMENSIONS
    mechanism: str = "none"  # none | laplace | gaussian
    epsilon: float | None = None  # per day of data in a release
    delta: float | None = None
    audience_epsilon: float | None = None  # the audience's budget per data day, for life
    audience_delta: float | None = None
    first_window_days: int = 7
    max_events_per_cell: int = 50
    max_cells_per_day: int = 20
    max_duration_ms: int = 4 * 3600 * 1000
    anonymous_visitors: str = "exclude"
    allowed: dict[str, tuple[str, ...]] | None = None  # per dimension; None: no allow-list (tests of one module)
    description: str = ""

    @property
    def noisy(self) -> bool:
        return self.mechanism != "none"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dimensions"] = list(self.dimensions)
        if self.allowed is not None:
            data["allowed"] = {k: list(v) for k, v in self.allowed.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipientConfig:
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k not in RETIRED}
        unknown = set(data) - known
        if unknown:
            raise ConfigurationError(f"unknown recipient settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "dimensions" in values:
            values["dimensions"] = tuple(values["dimensions"])
        if values.get("allowed") is not None:
            values["allowed"] = {k: tuple(v) for k, v in values["allowed"].items()}
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
        audience = sharing.audiences[r.audience]
        out.append(
            RecipientConfig(
                name=name,
                audience=r.audience,
                k=r.k,
                dimensions=tuple(r.dimensions),
                mechanism=r.mechanism,
                epsilon=r.epsilon,
                delta=r.delta,
                audience_epsilon=audience.epsilon_per_day,
                audience_delta=audience.delta_per_day,
                first_window_days=r.first_window_days,
                max_events_per_cell=r.max_events_per_cell or sharing.max_events_per_cell,
                max_cells_per_day=r.max_cells_per_day or sharing.max_cells_per_day,
                max_duration_ms=sharing.max_duration_ms,
                anonymous_visitors=sharing.anonymous_visitors,
                allowed={k: tuple(v) for k, v in sharing.allowed_values.model_dump().items()},
                description=r.description,
            )
        )
    if only is not None and not out:
        known = ", ".join(sharing.recipients) or "none"
        raise ConfigurationError(f"no sharing recipient {only!r} in the policy file (recipients: {known})")
    return out
