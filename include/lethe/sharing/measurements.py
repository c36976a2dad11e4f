"""OpenDP measurements of a noisy release: which cells appear, and their noisy counts.

The unit of privacy is a person-day: one person's events and page views of one
UTC day (a release of D days composes D of them; lethe.sharing.budget keeps
one budget per audience and data day). The contribution bounds of the
aggregate (lethe.sharing.aggregate) are the stability maps of two OpenDP user
transformations from "person-days" to the cell counts:

- people per cell: a person-day is in at most C = max_cells_per_day cells and
  moves each by 1, so d_in person-days move the map of cells by
  (l0 = C d, l1 = C d, linf = d) (l2 = sqrt(C) d for Gaussian noise);
- events per cell: each cell by at most L = max_events_per_cell, so l1 = C L d
  (l2 = sqrt(C) L d).

Which cells appear is decided by private partition selection: OpenDP's
make_laplace_threshold / make_gaussian_threshold add discrete noise to each
present cell's people count and keep the cell only when the noisy count
reaches the threshold, so no exact count is ever compared with anything; the
threshold is the smallest count (at least k) for which the chance of a cell
showing a single person-day stays under delta. Events get discrete Laplace or
Gaussian noise on the kept cells only. Epsilon is split evenly between the two
measures; OpenDP composes them and, for Gaussian noise, converts zCDP to
(epsilon, delta). Noise comes from OpenDP's cryptographically secure sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lethe.db import ConfigurationError
from lethe.sharing.config import RecipientConfig

MAX_THRESHOLD = 2**30  # no cell of a day holds a billion people


class Cells(dict):  # type: ignore[type-arg]
    """The exact counts of a window's cells: {"people": {key: n}, "events": {key: n}}."""


def _opendp() -> Any:
    import opendp.prelude as dp

    # contrib: the threshold measurements; honest-but-curious: user transformations (our stability maps).
    dp.enable_features("contrib", "honest-but-curious")
    return dp


def _domains(dp: Any, config: RecipientConfig) -> tuple[Any, Any]:
    bounds = f"C={config.max_cells_per_day},L={config.max_events_per_cell}"
    cells = dp.user_domain(f"LetheBoundedCells({bounds})", member=lambda x: isinstance(x, Cells))
    return cells, dp.user_distance("PersonDays")


def _people(dp: Any, config: RecipientConfig) -> Any:
    """Person-days -> the map of cells to people, its stability map from the bounds."""
    cells, person_days = _domains(dp, config)
    c = config.max_cells_per_day
    distance = dp.l01inf_distance if config.mechanism == "laplace" else dp.l02inf_distance
    return dp.t.make_user_transformation(
        cells,
        person_days,
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=dp.i64)),
        distance(dp.absolute_distance(T=dp.i64)),
        function=lambda x: x["people"],
        # l0: cells touched; l1 (or the l2 bound, capped by l0 x linf^2 in OpenDP's map): their sum; linf: 1 each.
        stability_map=lambda d: (c * d, c * d, d),
    )


def _events(dp: Any, config: RecipientConfig, keys: tuple[str, ...]) -> Any:
    """Person-days -> the events of the kept cells, in `keys` order."""
    cells, person_days = _domains(dp, config)
    c, cap = config.max_cells_per_day, config.max_events_per_cell
    if config.mechanism == "laplace":
        metric, stability = dp.l1_distance(T=dp.i64), lambda d: c * cap * d
    else:
        metric, stability = dp.l2_distance(T=dp.i64), lambda d: math.ceil(math.sqrt(c) * cap * d)
    return dp.t.make_user_transformation(
        cells,
        person_days,
        dp.vector_domain(dp.atom_domain(T=dp.i64)),
        metric,
        function=lambda x: [x["events"][k] for k in keys],
        stability_map=stability,
    )


def _selection(dp: Any, config: RecipientConfig, scale: float, threshold: int) -> Any:
    then = dp.m.then_laplace_threshold if config.mechanism == "laplace" else dp.m.then_gaussian_threshold
    return _people(dp, config) >> then(scale=scale, threshold=threshold)


def _counts(dp: Any, config: RecipientConfig, scale: float, keys: tuple[str, ...] = ()) -> Any:
    then = dp.m.then_laplace if config.mechanism == "laplace" else dp.m.then_gaussian
    return _events(dp, config, keys) >> then(scale=scale)


def _composed(dp: Any, config: RecipientConfig, people_scale: float, events_scale: float, threshold: int) -> Any:
    """Both measures as one OpenDP measurement whose map(1) is the (epsilon, delta) of one person-day.

    Gaussian: the composition is (rho, delta_selection)-approximate zCDP; OpenDP converts it to (epsilon,
    delta) with half of the recipient's delta for the conversion on top of what selection uses.
    """
    selection = _selection(dp, config, people_scale, threshold)
    both = dp.c.make_composition([selection, dp.c.make_approximate(_counts(dp, config, events_scale))])
    if config.mechanism == "laplace":
        return both
    assert config.delta is not None
    return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(both), config.delta / 2 + selection.map(1)[1])


@dataclass(frozen=True)
class Plan:
    """The calibrated noise of one recipient: what its manifest may say about it (all public)."""

    mechanism: str
    people_scale: float
    events_scale: float
    threshold: int
    epsilon: float  # per person-day, as OpenDP's composed map gives it
    delta: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "library": "opendp",
            "people_scale": round(self.people_scale, 6),
            "events_scale": round(self.events_scale, 6),
            "threshold": self.threshold,
            "epsilon_per_day": self.epsilon,
            "delta_per_day": self.delta,
        }


def check_parameters(config: RecipientConfig) -> None:
    """Refuse settings no calibration can honour (the policy model checks the same; a manifest may be older)."""
    where = f"sharing recipient {config.name!r}"
    if config.mechanism not in ("laplace", "gaussian"):
        raise ConfigurationError(f"{where}: mechanism {config.mechanism!r} is not laplace or gaussian")
    if config.epsilon is None or not 0 < config.epsilon <= MAX_EPSILON:
        raise ConfigurationError(f"{where}: epsilon must be in (0, {MAX_EPSILON:g}] per day, got {config.epsilon!r}")
    if config.delta is None or not 0 < config.delta <= MAX_DELTA:
        raise ConfigurationError(
            f"{where}: delta must be in (0, {MAX_DELTA:g}] per day (private partition selection needs it), "
            f"got {config.delta!r}"
        )
    if config.k < 2 or config.max_cells_per_day < 1 or config.max_events_per_cell < 1:
        raise ConfigurationError(f"{where}: k must be at least 2 and the contribution bounds at least 1")


MAX_EPSILON = 5.0  # per person-day; beyond it noise hides nothing worth the name
MAX_DELTA = 1e-5  # per person-day; delta is the chance of a cell showing one person-day's data outright


def plan(config: RecipientConfig) -> Plan:
    """Calibrate the scales and the threshold with OpenDP's privacy maps; refuse what cannot be met."""
    check_parameters(config)
    key = (
        config.mechanism,
        config.epsilon,
        config.delta,
        config.k,
        config.max_cells_per_day,
        config.max_events_per_cell,
    )
    try:
        return _plan(*key)
    except ConfigurationError:
        raise
    except Exception as exc:  # an OpenDP error: say which recipient and which settings
        raise ConfigurationError(
            f"sharing recipient {config.name!r}: OpenDP cannot calibrate {config.mechanism} noise for epsilon "
            f"{config.epsilon:g}, delta {config.delta:g}, k {config.k}, bounds {config.max_cells_per_day} cells x "
            f"{config.max_events_per_cell} events: {exc}"
        ) from None


def _smallest_scale(dp: Any, fits: Any) -> float:
    """The smallest noise scale for which `fits` (a check of OpenDP's privacy map) holds."""

    def safely(scale: float) -> bool:
        try:
            return bool(fits(scale))
        except dp.OpenDPException:  # a map that overflows at this scale does not fit
            return False

    return float(dp.binary_search(safely, bounds=(1e-3, 1e5), T=float))


@lru_cache(maxsize=32)
def _plan(mechanism: str, epsilon: float, delta: float, k: int, cells: int, events: int) -> Plan:
    dp = _opendp()
    config = RecipientConfig(
        name="calibration",
        k=k,
        mechanism=mechanism,
        epsilon=epsilon,
        delta=delta,
        max_cells_per_day=cells,
        max_events_per_cell=events,
    )
    if mechanism == "laplace":
        # Half of epsilon each; delta goes to partition selection only (the Laplace counts are pure).
        people_scale = _smallest_scale(dp, lambda s: _selection(dp, config, s, MAX_THRESHOLD).map(1)[0] <= epsilon / 2)
        events_scale = _smallest_scale(dp, lambda s: _counts(dp, config, s).map(1) <= epsilon / 2)
        selection_delta = delta
    else:
        # One zCDP budget split evenly (events' scale is L times people's), delta half to the conversion to
        # (epsilon, delta), half to partition selection.
        cap = config.max_events_per_cell
        base = _smallest_scale(dp, lambda s: _composed(dp, config, s, s * cap, MAX_THRESHOLD).map(1)[0] <= epsilon)
        people_scale, events_scale, selection_delta = base, base * cap, delta / 2
    threshold = dp.binary_search(
        lambda t: _selection(dp, config, people_scale, t).map(1)[1] <= selection_delta, bounds=(k, MAX_THRESHOLD)
    )
    spent = _composed(dp, config, people_scale, events_scale, threshold).map(1)
    if spent[0] > epsilon * (1 + 1e-9) or spent[1] > delta * (1 + 1e-9):
        raise ConfigurationError(f"calibration overshot: epsilon {spent[0]:g}, delta {spent[1]:g}")
    return Plan(mechanism, float(people_scale), float(events_scale), int(threshold), float(spent[0]), float(spent[1]))


def release(config: RecipientConfig, people: dict[str, int], events: dict[str, int]) -> tuple[dict[str, int], dict]:
    """The kept cells' noisy people and events, keyed like the input: ({key: people}, {key: events})."""
    p = plan(config)
    dp = _opendp()
    data = Cells(people=people, events=events)
    kept = _selection(dp, config, p.people_scale, p.threshold)(data)
    keys = tuple(sorted(kept))
    noisy_events = _counts(dp, config, p.events_scale, keys)(data) if keys else []
    return {k: int(v) for k, v in kept.items()}, dict(zip(keys, (int(v) for v in noisy_events), strict=True))
