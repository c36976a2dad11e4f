"""Mutants of the policy file, the equivalent-mutant list, and the mutation report.

A mutant is the policy made weaker (or different) in one place: a rule removed, a period halved
or doubled, an action swapped, a masked column unmasked, a rule's consent condition ignored, a clock
started at the date instead of its financial year's end or without the columns that restart it,
or legal holds ignored on one table.
The clause tests (tests/clauses) run against each; a mutant they do not notice *survives*, and
survivors fail CI unless tests/clauses/equivalent_mutants.txt says why they cannot be noticed.

`lethe policy mutate` runs tests/clauses/test_mutation.py, which uses this module.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from lethe.policy.model import PERSONAL_CATEGORIES, Duration

TEXT_TYPES = ("text", "character varying")


@dataclass(frozen=True)
class Mutant:
    id: str  # stable, no spaces: the equivalents file names mutants by it
    table: str  # the table whose clause tests must notice it
    description: str
    document: dict[str, Any] | None  # the mutated policy document; None: a code mutant (holds ignored)

    @property
    def holds_ignored(self) -> bool:
        return self.document is None


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    killed: bool
    by: str  # the first failed fact and its words, or the error that stopped the purge; "" if it survived


# Column -> (PostgreSQL data type, nullable), per table: the live schema's, to pick a swap's column.
Schema = dict[str, dict[str, tuple[str, bool]]]


def _duration(td: timedelta) -> str:
    seconds = td.seconds
    return f"P{td.days}D" + (f"T{seconds}S" if seconds else "")


def _anonymise_column(table: dict[str, Any], columns: dict[str, tuple[str, bool]]) -> tuple[str, str] | None:
    """A personal column an anonymise rule can rewrite on this schema: nulled if nullable, else redacted text."""
    for column, klass in table.get("columns", {}).items():
        if klass not in PERSONAL_CATEGORIES or column not in columns:
            continue
        data_type, nullable = columns[column]
        if nullable:
            return column, "null"
        if data_type in TEXT_TYPES:
            return column, "redact"
    return None


def generate(document: dict[str, Any], schema: Schema) -> tuple[list[Mutant], list[str]]:
    """Every mutant of the policy document, and a note for each mutant that could not be made."""
    mutants: list[Mutant] = []
    notes: list[str] = []

    def mutate(table: str, index: int, change: Any) -> dict[str, Any]:
        doc = copy.deepcopy(document)
        change(doc["tables"][table], doc["tables"][table]["retention"], index)
        return doc

    for table, spec in document.get("tables", {}).items():
        rules = spec.get("retention") or []
        for i, rule in enumerate(rules):
            name = rule["name"]

            def remove(t: dict[str, Any], rs: list[Any], i: int, name: str = name) -> None:
                del rs[i]
                if not rs:  # a table must keep something: without its rule it is kept forever
                    t["retain_indefinitely"] = f"mutant: rule {name} removed"

            mutants.append(Mutant(f"remove:{name}", table, f"rule {name} removed", mutate(table, i, remove)))

            keep = Duration(rule["keep"]).to_timedelta()
            for label, factor in (("halved", 0.5), ("doubled", 2.0)):
                new = _duration(keep * factor)
                if keep * factor == keep:
                    notes.append(f"keep-{label}:{name}: {rule['keep']} {label} is {rule['keep']}: no mutant")
                    continue

                def set_keep(t: dict[str, Any], rs: list[Any], i: int, new: str = new) -> None:
                    rs[i]["keep"] = new

                mutants.append(
                    Mutant(
                        f"keep-{label}:{name}",
                        table,
                        f"rule {name}: keep {rule['keep']} {label} to {new}",
                        mutate(table, i, set_keep),
                    )
                )

            action = rule["action"]
            if action in ("anonymise", "drop_partitions"):

                def to_delete(t: dict[str, Any], rs: list[Any], i: int) -> None:
                    rs[i]["action"] = "delete"
                    rs[i].pop("columns", None)

                mutants.append(
                    Mutant(
                        f"action:{name}:{action}->delete",
                        table,
                        f"rule {name}: {action} swapped for delete",
                        mutate(table, i, to_delete),
                    )
                )
            else:
                picked = _anonymise_column(spec, schema.get(table, {}))
                if picked is None:
                    notes.append(f"action:{name}:delete->anonymise: {table} has no personal column to rewrite")
                else:

                    def to_anonymise(
                        t: dict[str, Any], rs: list[Any], i: int, picked: tuple[str, str] = picked
                    ) -> None:
                        rs[i]["action"] = "anonymise"
                        rs[i]["columns"] = {picked[0]: picked[1]}

                    mutants.append(
                        Mutant(
                            f"action:{name}:delete->anonymise",
                            table,
                            f"rule {name}: delete swapped for anonymise ({picked[0]}: {picked[1]})",
                            mutate(table, i, to_anonymise),
                        )
                    )

            if rule.get("unless_consent"):

                def ignore_consent(t: dict[str, Any], rs: list[Any], i: int) -> None:
                    del rs[i]["unless_consent"]

                mutants.append(
                    Mutant(
                        f"consent-ignored:{name}",
                        table,
                        f"rule {name}: acts on every row, consented or not",
                        mutate(table, i, ignore_consent),
                    )
                )

            if rule.get("starts", "at_the_date") != "at_the_date":

                def from_the_date(t: dict[str, Any], rs: list[Any], i: int) -> None:
                    del rs[i]["starts"]

                mutants.append(
                    Mutant(
                        f"starts-at-the-date:{name}",
                        table,
                        f"rule {name}: clock starts at the date, not at the end of its {rule['starts']}",
                        mutate(table, i, from_the_date),
                    )
                )
            if rule.get("also_after"):

                def only_after(t: dict[str, Any], rs: list[Any], i: int) -> None:
                    del rs[i]["also_after"]

                mutants.append(
                    Mutant(
                        f"also-after-ignored:{name}",
                        table,
                        f"rule {name}: {', '.join(rule['also_after'])} no longer restart the clock",
                        mutate(table, i, only_after),
                    )
                )

            masked = list(rule.get("columns") or {})
            for column in masked:
                if len(masked) == 1:
                    notes.append(f"unmask:{name}:{column}: the rule's only column (unmasked, the rule is invalid)")
                    continue

                def unmask(t: dict[str, Any], rs: list[Any], i: int, column: str = column) -> None:
                    del rs[i]["columns"][column]

                mutants.append(
                    Mutant(
                        f"unmask:{name}:{column}",
                        table,
                        f"rule {name}: column {column} no longer masked",
                        mutate(table, i, unmask),
                    )
                )
        if rules and spec.get("subject"):
            # Holds are not in the policy file: this mutant switches off the retention predicates' hold
            # handling for the table (a code mutant, applied by the harness).
            mutants.append(Mutant(f"holds-ignored:{table}", table, f"legal holds ignored on {table}", None))
    return mutants, notes


_LINE = re.compile(r"^(\S+)\s+(\S.*)$")


def load_equivalents(path: Path) -> dict[str, str]:
    """Mutant id -> the one-line reason it cannot be told from the policy. Blank lines and # comments skipped."""
    if not path.exists():
        return {}
    found: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: give the mutant id, then a one-line reason it is equivalent")
        if m.group(1) in found:
            raise ValueError(f"{path}:{n}: mutant {m.group(1)} is listed twice")
        found[m.group(1)] = m.group(2)
    return found


def report(outcomes: list[Outcome], equivalents: dict[str, str], notes: list[str]) -> tuple[list[str], list[str]]:
    """The report's lines, and the problems that fail CI (unlisted survivors, stale equivalents)."""
    survivors = [o for o in outcomes if not o.killed and o.mutant.id not in equivalents]
    equivalent = [o for o in outcomes if not o.killed and o.mutant.id in equivalents]
    killed = [o for o in outcomes if o.killed]
    scored = len(outcomes) - len(equivalent)
    score = 100.0 * len(killed) / scored if scored else 100.0
    lines = [
        f"mutation score: {len(killed)}/{scored} killed ({score:.1f}%); {len(equivalent)} equivalent,"
        f" {len(survivors)} survived, {len(outcomes)} mutants"
    ]
    for o in outcomes:
        if o.killed:
            status = "killed    "
        elif o.mutant.id in equivalents:
            status = "equivalent"
        else:
            status = "SURVIVED  "
        lines.append(f"  {status} {o.mutant.id}: {o.mutant.description}")
        if o.killed:
            lines.append(f"      by {o.by}")
        elif o.mutant.id in equivalents:
            lines.append(f"      because {equivalents[o.mutant.id]}")
    lines += [f"  not generated: {note}" for note in notes]
    problems = [f"surviving mutant {o.mutant.id}: {o.mutant.description}" for o in survivors]
    ids = {o.mutant.id for o in outcomes}
    for mutant_id in sorted(equivalents):
        if mutant_id not in ids:
            problems.append(f"equivalent_mutants.txt lists {mutant_id}, which is no mutant of this policy")
        elif any(o.killed for o in outcomes if o.mutant.id == mutant_id):
            problems.append(f"equivalent_mutants.txt lists {mutant_id}, but the clause tests kill it")
    return lines, problems
