"""The policy file's models. Loading fails with the file, line and field of each error."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# re:Skill's purposes (clauses 1-7), plus the record of removals: the default when a policy file declares none.
PURPOSES = {
    "updates": "1. To provide you with latest information",
    "services": "2. To enable providing services to you",
    "usage": "3. To improve our offering based on your usage",
    "security": "4. To protect us from unlawful usage of the services",
    "marketing": "5. For promoting or marketing our services",
    "evidence": "6. For internal evidence and to protect the rights and interests of CodeOps and other users",
    "legal": "7. To fulfil legal duties",
    "erasure_record": "Data retention: pseudonyms kept solely for a record about the data removal",
}
# A purpose is a name the policy file declares under `purposes:` (checked by Policy).
Purpose = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
LegalBasis = Literal["contract", "legitimate_interest", "consent", "legal_obligation"]

# Column classes: the policy's data categories, then Lethe's structural classes.
PERSONAL_CATEGORIES = [
    "name",
    "email",
    "phone",
    "username",
    "password",
    "cookie",
    "ip_address",
    "ssh_key",
    "address",
    "payment",
    "tax_id",
    "usage",
    "comment",
    "feedback",
    "survey",
    "app_data",
    "issue_report",
    "age",
    "city",
    "interests",
    "device",
    "communication",
    "dispute",
    "security",
]
STRUCTURAL_CLASSES = ["identifier", "pseudonym", "pending_identifier", "timestamp", "attribute"]
COLUMN_CLASSES = frozenset(PERSONAL_CATEGORIES + STRUCTURAL_CLASSES)


def _column_class(value: str) -> str:
    if value not in COLUMN_CLASSES:
        raise ValueError(
            f"unknown class {value!r}; use a data category of the policy ({', '.join(PERSONAL_CATEGORIES)}) "
            f"or one of {', '.join(STRUCTURAL_CLASSES)}"
        )
    return value


ColumnClass = Annotated[str, AfterValidator(_column_class)]

# re:Skill's consent purposes: the default when a policy file declares no `consent_purposes:`.
CONSENT_PURPOSES = ("updates", "third_party", "analytics", "security", "marketing", "quotes")
# pseudonym_link: the link to the subject is cut (NULL) and the pseudonym kept; placeholder: a NOT NULL link is
# re-pointed to the policy's placeholder subject row and the pseudonym kept (in Lethe's schema if the table has
# no pseudonym column).
# unique_redact: "[redacted <subject key>]" for a unique NOT NULL column (email, username): names no one.
# In a retention rule (action anonymise), pseudonym_link on the table's subject column cuts the link after the
# rule's window and writes the subject's keyed pseudonym into the table's `pseudonym` column instead.
Strategy = Literal["null", "redact", "unique_redact", "truncate_ip", "pseudonym_link", "placeholder"]
LINK_STRATEGIES = ("pseudonym_link", "placeholder")

_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


class PolicyError(ValueError):
    """A policy file that cannot be used; `problems` lists each located problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Duration(str):
    """An ISO-8601 duration such as P30D, P1Y6M or PT12H; years count 365 days, months 30."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(_duration, serialization=core_schema.to_string_ser_schema())

    def to_timedelta(self) -> timedelta:
        m = _DURATION.match(self)
        assert m
        y, mo, w, d, h, mi, s = (int(g or 0) for g in m.groups())
        return timedelta(days=y * 365 + mo * 30 + w * 7 + d, hours=h, minutes=mi, seconds=s)

    def postgres_interval(self) -> str:
        """The same length as a PostgreSQL interval literal (fixed days, so plan and SQL agree)."""
        td = self.to_timedelta()
        return f"{td.days} days {td.seconds} seconds"


def _duration(value: Any) -> Duration:
    if not isinstance(value, str) or value in ("P", "PT") or not _DURATION.match(value) or value.endswith("T"):
        raise ValueError(f"{value!r} is not an ISO-8601 duration (for example P30D, P1Y, PT12H)")
    duration = Duration(value)
    try:  # the cutoff `now - keep` must still be a date
        datetime.now(UTC) - duration.to_timedelta()
    except OverflowError:
        raise ValueError(f"{value!r} reaches back before the year 1: no date can be that old") from None
    return duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetentionRule(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    keep: Duration
    after: str
    action: Literal["delete", "anonymise", "drop_partitions"]
    columns: dict[str, Strategy] = Field(default_factory=dict)
    # Only rows the subject's consent to this purpose did not cover at the row's own `after` time
    # (granted at or before it, not yet withdrawn or objected to): "collected only if you permit".
    unless_consent: str | None = None
    # More columns of the row that restart the clock: it runs from the latest of `after` and these
    # (a refund extends the record of a payment). Null columns are ignored.
    also_after: list[str] = Field(default_factory=list)
    # `end_of_financial_year`: the clock starts when the financial year of that moment ends
    # (the policy's `financial_year`, April to March by default), as statutory record keeping counts.
    starts: Literal["at_the_date", "end_of_financial_year"] = "at_the_date"
    # The law and section a statutory period follows (required with end_of_financial_year).
    law: str | None = None

    @model_validator(mode="after")
    def _columns_for_anonymise(self) -> RetentionRule:
        if self.unless_consent and self.event:
            raise ValueError("`unless_consent` needs a clock on a column of the row (the time the data was collected)")
        if (self.also_after or self.starts != "at_the_date") and self.event:
            raise ValueError("`also_after` and `starts` need a clock on a column of the row, not an event")
        if (self.also_after or self.starts != "at_the_date") and self.action == "drop_partitions":
            raise ValueError("drop_partitions counts from the partition key alone: no `also_after` or `starts`")
        if self.starts == "end_of_financial_year" and not (self.law or "").strip():
            raise ValueError("a statutory period counted from the financial year's end must cite its `law`")
        if self.action == "anonymise" and not self.columns:
            raise ValueError("action anonymise needs `columns` (column: strategy)")
        if self.action != "anonymise" and self.columns:
            raise ValueError(f"`columns` only applies to action anonymise, not {self.action}")
        return self

    @property
    def cuts_link(self) -> bool:
        """The rule replaces the subject link by the subject's keyed pseudonym (strategy pseudonym_link)."""
        return "pseudonym_link" in self.columns.values()

    @property
    def event(self) -> str | None:
        """`account_closed` or `consent_ended`, when the clock starts at an event of the subject."""
        if self.after == "account_closed":
            return "account_closed"
        if self.after.startswith("consent_ended:"):
            return "consent_ended"
        return None

    @property
    def consent_purpose(self) -> str | None:
        return self.after.split(":", 1)[1] if self.after.startswith("consent_ended:") else None

    @property
    def clock(self) -> str:
        """The clock in words, for reports: `after occurred_at, unless analytics consent covered it`."""
        words = (
            f"after {', '.join(['the latest of ' + self.after, *self.also_after]) if self.also_after else self.after}"
        )
        if self.starts == "end_of_financial_year":
            words += " (from the end of its financial year)"
        if self.unless_consent:
            words += f", where no {self.unless_consent} consent covered {self.after}"
        return words


class Erasure(_Strict):
    """What erasing a person does to the table's rows of that person.

    For a table the person's rows point to (an address), `delete` removes a row only when
    nothing else references it any more; `pseudonymise` masks `columns`; `retain` keeps it.
    """

    action: Literal["delete", "pseudonymise", "retain"]
    columns: dict[str, Strategy] = Field(default_factory=dict)
    retained_because: str | None = None
    # Personal columns a kept row keeps as they are, each with its reason (the law or clause).
    keep: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Erasure:
        if self.action == "pseudonymise" and not self.columns:
            raise ValueError("action pseudonymise needs `columns` (column: strategy)")
        if self.action in ("pseudonymise", "retain") and not self.retained_because:
            raise ValueError(f"action {self.action} keeps data: say why in `retained_because`")
        if self.action == "delete" and self.keep:
            raise ValueError("`keep` only applies to actions pseudonymise and retain: delete keeps nothing")
        both = sorted(set(self.keep) & set(self.columns))
        if both:
            raise ValueError(f"columns both masked and kept: {', '.join(both)}")
        empty = sorted(c for c, why in self.keep.items() if not why.strip())
        if empty:
            raise ValueError(f"kept columns need their reason: {', '.join(empty)}")
        return self


class TableRule(_Strict):
    description: str
    purpose: Purpose
    legal_basis: LegalBasis
    subject: str | None
    backup: bool
    columns: dict[str, ColumnClass]
    retention: list[RetentionRule] = Field(default_factory=list)
    retain_indefinitely: str | None = None
    erasure: Erasure | None = None
    partitioned_by: str | None = None
    free_text: list[str] = Field(default_factory=list)

    @field_validator("retention", mode="before")
    @classmethod
    def _empty_retention(cls, value: Any) -> Any:
        return [] if value is None else value  # `retention:` with nothing under it

    @model_validator(mode="after")
    def _consistent(self) -> TableRule:
        if not self.retention and not self.retain_indefinitely:
            raise ValueError("missing retention: give `retention` rules, or `retain_indefinitely` with the reason")
        if self.subject is not None and self.erasure is None:
            raise ValueError("a table linked to the data subject needs an `erasure` action")
        named = [self.subject, self.partitioned_by, *self.free_text]
        named += [r.after for r in self.retention if r.event is None]
        named += [c for r in self.retention for c in r.also_after]
        named += [c for r in self.retention for c in r.columns]
        named += [*self.erasure.columns, *self.erasure.keep] if self.erasure else []
        for column in named:
            if column is not None and column not in self.columns:
                raise ValueError(f"column {column!r} is used but not listed under `columns`")
        for rule in self.retention:
            if rule.action == "drop_partitions" and rule.after != self.partitioned_by:
                raise ValueError(f"rule {rule.name}: drop_partitions must count from the partition key")
            if "unique_redact" in rule.columns.values() and self.subject is None:
                raise ValueError(f"rule {rule.name}: unique_redact writes the subject key, so it needs a `subject`")
            if (rule.event or rule.unless_consent) and self.subject is None:
                raise ValueError(f"rule {rule.name}: {rule.after} needs a `subject` link")
            if rule.unless_consent and rule.action == "drop_partitions":
                raise ValueError(f"rule {rule.name}: `unless_consent` picks rows, so it cannot drop whole partitions")
            if rule.cuts_link:
                self._link_rule(rule)
        return self

    def _link_rule(self, rule: RetentionRule) -> None:
        """A rule cutting the subject link: on the subject column, into the table's one pseudonym column."""
        cut = [c for c, s in rule.columns.items() if s == "pseudonym_link"]
        if self.subject is None or cut != [self.subject]:
            raise ValueError(f"rule {rule.name}: pseudonym_link cuts the subject link, so only the `subject` column")
        if rule.event or rule.unless_consent:
            raise ValueError(f"rule {rule.name}: pseudonym_link counts from a time of the row (its window)")
        pseudonyms = [c for c, cls in self.columns.items() if cls == "pseudonym"]
        if len(pseudonyms) != 1:
            raise ValueError(
                f"rule {rule.name}: pseudonym_link writes the subject's keyed pseudonym into the table's column "
                f"of class pseudonym: classify exactly one column so (found {len(pseudonyms)})"
            )

    @property
    def link_pseudonym(self) -> str | None:
        """The column a retention rule writes the subject's keyed pseudonym into when it cuts the link, if any:
        rows found through it belong to the subject whose pseudonym it holds."""
        if not any(r.cuts_link for r in self.retention):
            return None
        return next(c for c, cls in self.columns.items() if cls == "pseudonym")


class Backups(_Strict):
    """Cross-region backups: how long a snapshot is kept; one erasure rewrites at most 1/buckets of it."""

    retention: Duration = Duration("P35D")
    buckets: int = Field(default=64, ge=1, le=4096)
    # A Bloom filter of each free-text object's keyed terms, so that propagation searches only the objects
    # that may mention an erased person. Off by default: building it costs the export far more than the
    # export itself (BENCHMARKS.md, "Indexed propagation").
    term_index: bool = False
    # Each night stores only the rows changed since the night before, over a base that expiry rolls forward
    # (lethe.backup.chain): 35 nights cost about 1 + 34 x the daily change of one snapshot, not 35 copies.
    incremental: bool = False

    @field_validator("retention")
    @classmethod
    def _positive(cls, value: Duration) -> Duration:
        if value.to_timedelta() <= timedelta(0):
            raise ValueError(f"{value} keeps no snapshot at all: a backup retention must be longer than zero")
        return value


class FinancialYear(_Strict):
    """When the financial year starts (India: 1 April) and in which time zone, for `starts: end_of_financial_year`."""

    first_month: int = Field(default=4, ge=1, le=12)
    time_zone: str = "Asia/Kolkata"

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Kolkata)") from None
        return value


class AirflowMetadata(_Strict):
    """Airflow's own records of Lethe's runs (airflow_metadata_cleanup): all of them, and erasure requests."""

    retention: Duration = Duration("P30D")
    erasure_conf_retention: Duration = Duration("P1D")


SharingDimension = Literal["feature", "region", "device_type", "browser_family"]
SHARING_DIMENSIONS: tuple[SharingDimension, ...] = ("feature", "region", "device_type", "browser_family")


def _all_sharing_dimensions() -> list[SharingDimension]:
    return list(SHARING_DIMENSIONS)


class SharingRecipient(_Strict):
    """One third party that receives aggregated usage releases (lethe.sharing)."""

    description: str
    k: int = Field(default=10, ge=2)
    dimensions: list[SharingDimension] = Field(default_factory=_all_sharing_dimensions)
    mechanism: Literal["none", "laplace", "gaussian"] = "none"
    epsilon: float | None = Field(default=None, gt=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    epsilon_budget: float | None = Field(default=None, gt=0)
    budget_period: Duration | None = None
    first_window_days: int = Field(default=7, ge=1, le=366)
    max_events_per_cell: int | None = Field(default=None, ge=1)  # overrides the section's bound
    max_cells_per_day: int | None = Field(default=None, ge=1)
    enabled: bool = True

    @model_validator(mode="after")
    def _noise_settings(self) -> SharingRecipient:
        if self.mechanism == "none" and (self.epsilon or self.delta or self.epsilon_budget):
            raise ValueError("epsilon, delta and epsilon_budget only apply with mechanism laplace or gaussian")
        if self.mechanism != "none" and (self.epsilon is None or self.epsilon_budget is None):
            raise ValueError(f"mechanism {self.mechanism} needs `epsilon` (per day of data) and `epsilon_budget`")
        if self.mechanism == "gaussian" and self.delta is None:
            raise ValueError("mechanism gaussian needs `delta`")
        if self.mechanism == "laplace" and self.delta is not None:
            raise ValueError("`delta` only applies to mechanism gaussian")
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("a dimension is listed twice")
        return self


class SharingConsent(_Strict):
    """Whose rows a release may count: people with a consent to `purpose` granted (`granted` column) before
    the row and not ended. The consent table, its subject, purpose and ended columns are `clocks.consent_ended`'s."""

    purpose: str
    granted: str


class SharingUsage(_Strict):
    """The product usage events: one row per event of a person (`person` holds the subject's key)."""

    table: str
    person: str
    at: str  # when the event happened (a timestamp)
    feature: str
    duration_ms: str


class SharingPages(_Strict):
    """The web log: one row per page view, of a member (`person` set) or an anonymous visitor (`visitor` cookie).

    A member's usage events of a day take region, device and browser from their first page view that day."""

    table: str
    person: str
    at: str
    path: str
    time_zone: str
    device_type: str
    browser: str
    user_agent: str
    visitor: str | None = None  # counting key of anonymous page views; without it they are left out


class SharingSource(_Strict):
    """Where the shared data lives: the aggregate's SQL is generated from these names."""

    consent: SharingConsent
    usage: SharingUsage
    pages: SharingPages


class Sharing(_Strict):
    """Aggregated anonymous releases of usage and visitor data (clause 3, Analytics)."""

    max_events_per_cell: int = Field(default=50, ge=1)
    max_cells_per_day: int = Field(default=20, ge=1)
    max_duration_ms: int = Field(default=4 * 3600 * 1000, ge=1)
    anonymous_visitors: Literal["by_visitor_id", "exclude"] = "by_visitor_id"
    source: SharingSource | None = None  # required by Policy as soon as there is a recipient
    recipients: dict[str, SharingRecipient] = Field(default_factory=dict)

    @field_validator("recipients")
    @classmethod
    def _recipient_names(cls, value: dict[str, SharingRecipient]) -> dict[str, SharingRecipient]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", name):
                raise ValueError(f"recipient name {name!r} must be lower-case letters, digits, _ or - (an S3 prefix)")
        return value


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpStatusCheck(_Strict):
    """How to ask an HTTP processor whether an erasure is done (`{job_id}` and `{id}` in the URL)."""

    method: HttpMethod = "GET"
    url: str
    field: str | None = None  # dotted path to the job's state in the JSON response
    done: list[str] = Field(default_factory=list)  # states of `field` meaning erased
    gone_statuses: list[int] = Field(default_factory=list)  # HTTP statuses meaning "no such person any more"

    @model_validator(mode="after")
    def _some_signal(self) -> HttpStatusCheck:
        if not (self.field and self.done) and not self.gone_statuses:
            raise ValueError("a status check needs `field` with `done` states, or `gone_statuses`")
        return self


class HttpDeletion(_Strict):
    """A provider's deletion API: templates take {id}, {host} and {extra[NAME]} of the Airflow connection."""

    method: HttpMethod
    url: str
    auth: Literal["bearer", "basic", "none"]
    body: dict[str, Any] | None = None  # JSON; string values are templates
    success_statuses: list[int]
    job_id_field: str | None = None  # dotted path to the provider's job id in the JSON response
    status: HttpStatusCheck | None = None


class Processor(_Strict):
    """A service outside the primary database holding copies of people's data, and how to erase them there."""

    description: str
    connector: Literal["aws_sesv2", "http"]
    connection: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # the Airflow connection with its credentials
    holds: list[ColumnClass]
    purposes: list[Purpose]
    regions: list[str] = Field(min_length=1)
    identifier: Literal["email", "user_id"]
    hash: Literal["none", "md5_lower", "sha256_lower"] = "none"  # as the provider's API wants the identifier
    # consent purposes whose objection or withdrawal removes the person here
    on_objection: list[Purpose] = Field(default_factory=list)
    http: HttpDeletion | None = None

    @model_validator(mode="after")
    def _connector_settings(self) -> Processor:
        if self.connector == "http" and self.http is None:
            raise ValueError("connector http needs an `http` block (method, url, auth, success_statuses)")
        if self.connector != "http" and self.http is not None:
            raise ValueError(f"`http` only applies to connector http, not {self.connector}")
        if self.connector == "aws_sesv2" and self.identifier != "email":
            raise ValueError("connector aws_sesv2 erases by email: set `identifier: email`")
        return self


class Objection(_Strict):
    """What an objection to (or withdrawal of consent for) one purpose does, in the policy's words.

    The rules counting from `consent_ended:<purpose>` and the processors listing the purpose under
    `on_objection` carry it out; `kept` names what stays and why (the balancing the policy states),
    so no objection is silently ignored.
    """

    clause: str  # where the privacy policy states the purpose, e.g. "3. To Improve Our Offering ..."
    effect: str  # what Lethe does, in words
    kept: dict[str, str] = Field(default_factory=dict)  # table -> why its rows stay despite the objection


class Subject(_Strict):
    """The data subject's table (`table` or `schema.table`), its key column (any type) and identifier columns.

    `placeholder`: the key value of the one row, with no personal data, that Lethe creates in the subject
    table and re-points NOT NULL links of kept rows to (erasure strategy `placeholder`).
    `phone_region`: the country (ISO 3166 alpha-2) whose national numbers the platform's phones are written
    in: `07700 900123` is +447700900123 in GB and +9107700900123 in IN. Required once the policy holds phones.
    """

    table: str
    key: str
    identifiers: dict[Literal["user_id", "email", "phone", "username"], str]
    placeholder: str | None = None
    phone_region: str | None = None

    @field_validator("placeholder", mode="before")
    @classmethod
    def _key_as_text(cls, value: Any) -> Any:
        # YAML reads `placeholder: 0` as a number; the key is kept as text whatever its type (PostgreSQL casts it).
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        import phonenumbers

        if value is not None and value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {value!r}: an ISO 3166 alpha-2 country code such as IN, GB, US")
        return value


class AccountClosedClock(_Strict):
    """`after: account_closed`: the row of `table` whose `subject` column holds the person's key says, in
    `column` (a timestamp), when the account closed."""

    table: str
    subject: str
    column: str


class ConsentEndedClock(_Strict):
    """`after: consent_ended:<purpose>`: a row of `table` for the person (`subject` column) and purpose
    (`purpose` column) whose earliest non-null `ended` column says when consent ended (withdrawn or objected)."""

    table: str
    subject: str
    purpose: str
    ended: list[str] = Field(min_length=1)


class Clocks(_Strict):
    account_closed: AccountClosedClock | None = None
    consent_ended: ConsentEndedClock | None = None


class Policy(_Strict):
    version: str
    source: str
    subject: Subject
    # The purposes rules and processors may name (name -> what it is for); re:Skill's when not given.
    purposes: dict[Purpose, str] = Field(default_factory=lambda: dict(PURPOSES))
    # The purposes a person consents to (and may withdraw or object): `after: consent_ended:<purpose>`.
    consent_purposes: list[Purpose] = Field(default_factory=lambda: list(CONSENT_PURPOSES))
    # Where the event clocks read their events; re:Skill's layout when not given (see `clock_*`).
    clocks: Clocks = Field(default_factory=Clocks)
    system_tables: list[str] = Field(default_factory=list)
    backups: Backups = Field(default_factory=Backups)
    sharing: Sharing = Field(default_factory=Sharing)
    airflow_metadata: AirflowMetadata = Field(default_factory=AirflowMetadata)
    processors: dict[str, Processor] = Field(default_factory=dict)
    objections: dict[str, Objection] = Field(default_factory=dict)
    financial_year: FinancialYear = Field(default_factory=FinancialYear)
    tables: dict[str, TableRule]
    path: Path | None = None
    digest: str = ""

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Policy:
        seen: set[str] = set()
        for rule in self.rules():
            if rule[1].name in seen:
                raise ValueError(f"rule name {rule[1].name!r} is used twice")
            seen.add(rule[1].name)
        if self.subject.table not in self.tables:
            raise ValueError(f"subject table {self.subject.table!r} is not under `tables`")
        problems = []
        for name, t in self.tables.items():
            if t.purpose not in self.purposes:
                problems.append(f"tables.{name}.purpose: unknown purpose {t.purpose!r}; declare it under `purposes`")
            for r in t.retention:
                for purpose in {r.consent_purpose, r.unless_consent} - {None} - set(self.consent_purposes):
                    problems.append(
                        f"tables.{name}: rule {r.name}: unknown consent purpose {purpose!r}; expected one of "
                        f"{', '.join(self.consent_purposes)} (`consent_purposes`)"
                    )
            if t.erasure and "placeholder" in t.erasure.columns.values() and self.subject.placeholder is None:
                problems.append(
                    f"tables.{name}.erasure: strategy placeholder needs `subject.placeholder` (the key of the "
                    "placeholder subject row Lethe creates)"
                )
        phones = [f"tables.{t}.{c}" for t, r in self.tables.items() for c, cls in r.columns.items() if cls == "phone"]
        if ("phone" in self.subject.identifiers or phones) and self.subject.phone_region is None:
            problems.append(
                f"subject.phone_region: the policy holds phone numbers ({', '.join(phones) or 'identifier phone'}):"
                " say which country's national numbers they are written in (ISO 3166 alpha-2, e.g. IN, GB, US)"
            )
        for name, p in self.processors.items():
            problems += [f"processors.{name}: unknown purpose {x!r}" for x in p.purposes if x not in self.purposes]
            problems += [
                f"processors.{name}.on_objection: unknown consent purpose {x!r}"
                for x in p.on_objection
                if x not in self.consent_purposes
            ]
        problems += self._sharing_source_problems()
        if problems:  # one per line, each `field: message`, so load_policy can give each its line
            raise ValueError("\n".join(problems))
        if self.objections:
            missing = [p for p in self.consent_purposes if p not in self.objections]
            if missing:
                raise ValueError(f"objections: say what an objection to {', '.join(missing)} does (never ignore one)")
            for purpose, objection in self.objections.items():
                unknown = sorted(set(objection.kept) - set(self.tables))
                if unknown:
                    raise ValueError(f"objections.{purpose}.kept: no table {', '.join(unknown)} in the policy")
                if not (self.objection_rules(purpose) or self.objection_processors(purpose) or objection.kept):
                    raise ValueError(
                        f"objections.{purpose}: no rule counts from consent_ended:{purpose}, no processor lists it"
                        " under on_objection, and nothing is kept with a reason: the objection would do nothing"
                    )
        return self

    def _sharing_source_problems(self) -> list[str]:
        """The sharing source names tables and columns the policy lists (so each is classified)."""
        source = self.sharing.source
        if source is None:
            return (
                ["sharing.source: recipients need `source` (consent, usage, pages)"] if self.sharing.recipients else []
            )
        consent = self.clock_consent_ended()
        problems = []
        if source.consent.purpose not in self.consent_purposes:
            problems.append(f"sharing.source.consent.purpose: unknown consent purpose {source.consent.purpose!r}")
        for where, table, columns in (
            ("consent", consent.table, [source.consent.granted]),
            ("usage", source.usage.table, [c for k, c in source.usage if k != "table"]),
            ("pages", source.pages.table, [c for k, c in source.pages if k != "table" and c is not None]),
        ):
            rule = self.tables.get(table)
            if rule is None:
                problems.append(f"sharing.source.{where}: no table {table!r} under `tables`")
                continue
            missing = [c for c in columns if c not in rule.columns]
            if missing:
                problems.append(f"sharing.source.{where}: {table} has no column {', '.join(missing)} under `tables`")
        return problems

    def clock_account_closed(self) -> AccountClosedClock:
        """Where `after: account_closed` reads the closing time (default: the subject table's `closed_at`)."""
        return self.clocks.account_closed or AccountClosedClock(
            table=self.subject.table, subject=self.subject.key, column="closed_at"
        )

    def clock_consent_ended(self) -> ConsentEndedClock:
        """Where `after: consent_ended:<purpose>` reads consents (default: re:Skill's `consents` table)."""
        return self.clocks.consent_ended or ConsentEndedClock(
            table="consents", subject="user_id", purpose="purpose", ended=["withdrawn_at", "objected_at"]
        )

    def objection_rules(self, purpose: str) -> list[tuple[str, RetentionRule]]:
        """The retention rules an objection to (or withdrawal of) `purpose` starts."""
        return [(t, r) for t, r in self.rules() if r.consent_purpose == purpose]

    def objection_processors(self, purpose: str) -> list[str]:
        return [name for name, p in self.processors.items() if purpose in p.on_objection]

    def rules(self) -> list[tuple[str, RetentionRule]]:
        """Every retention rule with its table, in file order."""
        return [(table, rule) for table, t in self.tables.items() for rule in t.retention]

    def rule(self, name: str) -> tuple[str, RetentionRule]:
        for table, rule in self.rules():
            if rule.name == name:
                return table, rule
        raise KeyError(f"no retention rule named {name!r} in the policy")


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each path in the YAML document to its 1-based line."""
    index = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index.update(_line_index(value, (*path, key.value)))
            index[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            index.update(_line_index(value, (*path, i)))
    return index


def duplicate_keys(node: yaml.Node, path: tuple[Any, ...] = ()) -> list[tuple[int, str, str]]:
    """(line, field, message) of every key given twice in one mapping, anywhere in the document.

    PyYAML keeps the last value silently; a repeated `keep:` would quietly replace a statutory period.
    """
    found: list[tuple[int, str, str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in first:
                field = ".".join(str(p) for p in (*path, key.value))
                found.append((line, field, f"duplicate key {key.value!r} (first given at line {first[key.value]})"))
            else:
                first[key.value] = line
            found += duplicate_keys(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            found += duplicate_keys(value, (*path, i))
    return found


def _field_path(field: str, lines: dict[tuple[Any, ...], int]) -> tuple[Any, ...]:
    """`tables.billing.invoices.purpose` -> ('tables', 'billing.invoices', 'purpose'): table names may hold a dot."""
    parts = field.split(".")
    for end in range(len(parts), 1, -1):
        name = ".".join(parts[1:end])
        if (parts[0], name) in lines:
            return (parts[0], name, *parts[end:])
    return tuple(parts)


def _locate(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def load_policy(path: Path | str | None = None) -> Policy:
    """Load and validate the policy file; raise PolicyError naming file, line and field."""
    from lethe.config import policy_file

    path = Path(path) if path else policy_file()
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read the policy file: {exc.strerror}"]) from exc
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise PolicyError([f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(data, dict) or node is None:
        raise PolicyError([f"{path}:1: the policy file must be a mapping with `version`, `subject` and `tables`"])
    duplicates = duplicate_keys(node)
    if duplicates:
        raise PolicyError([f"{path}:{line}: {field}: {message}" for line, field, message in duplicates])
    lines = _line_index(node)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
            field = ".".join(str(p) for p in loc) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            if (not loc and "\n" in message) or re.match(r"^(tables|processors|subject)\.[^ :]+: ", message):
                for part in message.split("\n"):  # the policy's cross-checks: `field: message` per line
                    where, _, text = part.partition(": ")
                    problems.append(f"{path}:{_locate(_field_path(where, lines), lines)}: {where}: {text}")
                continue
            problems.append(f"{path}:{_locate(loc, lines)}: {field}: {message}")
        raise PolicyError(problems) from None
    from lethe import residue  # here: residue imports this module

    residue.set_phone_region(policy.subject.phone_region)  # how this platform's national numbers read
    return policy.model_copy(update={"path": path, "digest": hashlib.sha256(text.encode()).hexdigest()[:16]})
