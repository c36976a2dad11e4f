"""The connector contract, the person handed to it, its receipt and the registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from lethe.policy.model import Processor

ReceiptStatus = Literal["confirmed", "accepted", "pending", "skipped"]
# confirmed: the provider says the person is gone; accepted: it took a deletion job (job_id) that
# completes on its side; pending: not reached (the request stays open); skipped: no connection defined.
DONE: tuple[str, ...] = ("confirmed", "accepted", "skipped")


class ProcessorUnavailable(RuntimeError):
    """The provider could not be reached or refused the call; safe to retry. The message has no identifier."""


class MissingIdentifier(ValueError):
    """The person has no value of the kind this processor knows people by: nothing can be sent."""


@dataclass(frozen=True)
class Person:
    """The identifiers a processor may need, read from the request at call time. Never printed."""

    identifiers: dict[str, str] = field(repr=False)

    def value(self, kind: str, hashing: str = "none") -> str:
        raw = self.identifiers.get(kind)
        if not raw:
            raise MissingIdentifier(f"no {kind} is known for the person")
        if hashing == "md5_lower":
            return hashlib.md5(raw.strip().lower().encode(), usedforsecurity=False).hexdigest()
        if hashing == "sha256_lower":
            return hashlib.sha256(raw.strip().lower().encode()).hexdigest()
        return raw


@dataclass(frozen=True)
class Credentials:
    """An Airflow connection's fields; the secret is kept out of repr."""

    conn_id: str
    host: str = ""
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Receipt:
    """What one call to a processor achieved: no identifier, only what the provider told us."""

    processor: str
    status: ReceiptStatus
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    job_id: str | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "processor": self.processor,
            "status": self.status,
            "at": self.at,
            "job_id": self.job_id,
            "error": self.error,
            "detail": self.detail,
        }


class Connector(Protocol):
    name: str

    def erase(self, person: Person) -> Receipt: ...

    def status(self, person: Person, job_id: str | None = None) -> Receipt: ...


_REGISTRY: dict[str, Callable[[str, Processor, Credentials], Connector]] = {}


def register(kind: str) -> Callable[[Any], Any]:
    def wrap(cls: Any) -> Any:
        _REGISTRY[kind] = cls
        return cls

    return wrap


def connector(name: str, spec: Processor, credentials: Credentials) -> Connector:
    """The connector for one processor of the policy, with its credentials."""
    try:
        factory = _REGISTRY[spec.connector]
    except KeyError:
        raise ValueError(f"processor {name}: no connector {spec.connector!r} (known: {', '.join(_REGISTRY)})") from None
    return factory(name, spec, credentials)
