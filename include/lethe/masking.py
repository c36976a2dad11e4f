"""The masking strategies, once: what a column becomes when retention, erasure, propagation or a
restore masks it. SQL (for the primary) and Arrow (for snapshot frames) side by side, so the
primary and its backups always end up with the same value (tests/integration/test_masking.py
compares them on the same inputs).

| strategy | becomes |
| --- | --- |
| `null` | NULL |
| `pseudonym_link` | NULL (the link to the person; the keyed pseudonym goes to the row's pseudonym column) |
| `redact` | the replacement text: `[redacted]` for retention, `[erased]` for erasure |
| `unique_redact` | `[redacted <subject key>]` (retention, SQL only: unique like the key it replaces) |
| `truncate_ip` | the /24 (IPv4) or /48 (IPv6) network, as PostgreSQL's `network(set_masklen(ip, n))` writes it |
| `placeholder:<key>` | the placeholder subject's key (a NOT NULL link re-pointed; erasure and backups) |

Free text naming a person is redacted span by span by lethe.residue.redact_text, which truncates
an IP-only value with `truncate_ip` below.
"""

from __future__ import annotations

import ipaddress

import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

ERASED = "[erased]"  # what an erasure writes
REDACTED = "[redacted]"  # what a retention rule writes
IPV4_PREFIX = 24
IPV6_PREFIX = 48
PLACEHOLDER_PREFIX = "placeholder:"
STRATEGIES = ("null", "pseudonym_link", "redact", "unique_redact", "truncate_ip", "placeholder")


class UnknownStrategy(ValueError):
    """A strategy this module does not define; names it."""


def truncate_ip(value: str | None) -> str | None:
    """An address (or network) as its /24 or /48 network, written as PostgreSQL writes that inet."""
    if value is None:
        return None
    ip = ipaddress.ip_interface(value.strip()).ip
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def sql_value(
    strategy: str,
    column: sql.Composable,
    *,
    replacement: str = ERASED,
    subject: sql.Composable | None = None,
) -> sql.Composable:
    """The SQL expression `column` is rewritten to (`subject`: the row's subject key, for unique_redact)."""
    if strategy in ("null", "pseudonym_link"):
        return sql.SQL("NULL")
    if strategy == "redact":
        return sql.Literal(replacement)
    if strategy == "unique_redact":
        if subject is None:
            raise UnknownStrategy("unique_redact needs the table's subject column")
        # Unique as the subject key is, and no address or handle anyone can register (brackets, a space).
        return sql.SQL("'[redacted ' || {}::text || ']'").format(subject)
    if strategy == "truncate_ip":
        return sql.SQL("network(set_masklen({0}, CASE WHEN family({0}) = 4 THEN {1} ELSE {2} END))::inet").format(
            column, sql.Literal(IPV4_PREFIX), sql.Literal(IPV6_PREFIX)
        )
    if strategy.startswith(PLACEHOLDER_PREFIX):
        return sql.Literal(strategy.removeprefix(PLACEHOLDER_PREFIX))
    raise UnknownStrategy(f"unknown masking strategy {strategy!r}")


def arrow_value(strategy: str, column: pa.Array, mask: pa.Array, *, replacement: str = ERASED) -> pa.Array:
    """`column` with the rows where `mask` is true rewritten by `strategy` (the others unchanged)."""
    if strategy in ("null", "pseudonym_link"):
        return pc.if_else(mask, pa.nulls(len(column), column.type), column)
    if strategy == "redact":
        return pc.if_else(mask, pa.scalar(replacement, column.type), column)
    if strategy.startswith(PLACEHOLDER_PREFIX):
        return pc.if_else(
            mask, pa.scalar(strategy.removeprefix(PLACEHOLDER_PREFIX), pa.string()).cast(column.type), column
        )
    if strategy == "truncate_ip":
        flags = mask.to_pylist()
        return pa.array(
            [truncate_ip(v) if f else v for v, f in zip(column.to_pylist(), flags, strict=True)], column.type
        )
    raise UnknownStrategy(f"unknown masking strategy {strategy!r} (unique_redact is SQL only)")
