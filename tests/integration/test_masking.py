"""lethe.masking: the SQL side (the primary) and the Arrow side (snapshot frames, restores) give the same
value for the same input, read back through a real PostgreSQL column of the same type."""

from __future__ import annotations

from typing import Any

import psycopg2
import pyarrow as pa
import pytest
from lethe import masking, residue
from lethe.backup.mentions import MentionFinder
from psycopg2 import sql

pytestmark = pytest.mark.integration

IPS = [
    "203.0.113.77",
    "203.0.113.0/24",  # already truncated
    "10.1.0.0/16",  # a wider network: PostgreSQL's set_masklen narrows it to its /24
    "198.51.100.255/32",
    "2001:db8:abcd:12::1",
    "2001:db8:abcd::/48",  # already truncated
    "::ffff:203.0.113.9",  # IPv4-mapped IPv6: family 6, so /48
    None,
]
TEXTS = ["Ask ASHA.Rao@Example.com", "plain", "", None]


def _rows(url: str, q: sql.Composable, args: Any = None) -> list[Any]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, args)
        return [r[0] for r in cur.fetchall()]


def _sql_masked(url: str, type_: str, values: list[Any], strategy: str) -> list[Any]:
    """Each value put in a column of `type_` and rewritten by the SQL strategy, read back as PostgreSQL gives it."""
    col = sql.Identifier("v")
    q = sql.SQL("SELECT ({expr})::{t} FROM unnest(%s::{t}[]) WITH ORDINALITY AS u(v, n) ORDER BY n").format(
        expr=masking.sql_value(strategy, col), t=sql.SQL(type_)
    )
    return _rows(url, q, (values,))


def _through_column(url: str, type_: str, values: list[Any]) -> list[Any]:
    """Values as a PostgreSQL column of `type_` stores and returns them (what a restore loads)."""
    q = sql.SQL("SELECT v FROM unnest(%s::{t}[]) WITH ORDINALITY AS u(v, n) ORDER BY n").format(t=sql.SQL(type_))
    return _rows(url, q, (values,))


def _arrow_masked(values: list[Any], strategy: str) -> list[Any]:
    column = pa.array(values, pa.string())
    return masking.arrow_value(strategy, column, pa.array([True] * len(values))).to_pylist()


@pytest.mark.parametrize("strategy", ["truncate_ip", "null", "pseudonym_link"])
def test_ip_strategies_agree(db_url: str, strategy: str) -> None:
    primary = _sql_masked(db_url, "inet", IPS, strategy)
    backup = _through_column(db_url, "inet", _arrow_masked(IPS, strategy))
    assert backup == primary
    if strategy == "truncate_ip":
        assert primary[:4] == ["203.0.113.0/24", "203.0.113.0/24", "10.1.0.0/24", "198.51.100.0/24"]
        assert primary[4:7] == ["2001:db8:abcd::/48", "2001:db8:abcd::/48", "::/48"]
        assert primary[7] is None


@pytest.mark.parametrize("strategy", ["redact", "null", "placeholder:0"])
def test_text_strategies_agree(db_url: str, strategy: str) -> None:
    primary = _sql_masked(db_url, "text", TEXTS, strategy)
    assert _through_column(db_url, "text", _arrow_masked(TEXTS, strategy)) == primary
    if strategy == "redact":
        assert primary == [masking.ERASED] * len(TEXTS)


def test_unmasked_rows_are_left_as_they_are() -> None:
    column = pa.array(["203.0.113.77", "2001:db8::1", None], pa.string())
    mask = pa.array([False, True, False])
    assert masking.arrow_value("truncate_ip", column, mask).to_pylist() == ["203.0.113.77", "2001:db8::/48", None]


def test_mention_redaction_is_the_same_on_the_primary_and_in_backups(db_url: str) -> None:
    """Free text: the primary's sweep redacts with the person's footprint, backups and restores with the
    tombstone's keyed pseudonyms; mixed case, an IP-only value and JSON come out the same."""
    key = b"k" * 32
    person = residue.Footprint("1")
    person.add("email", "asha.rao@example.com")
    person.add("ip", "203.0.113.77")
    values = [
        "Ask ASHA.Rao@Example.COM or asha.rao@example.com, not asha.rao@example.community",
        "203.0.113.77",
        '{"by": "Asha.Rao@example.com", "n": 1}',
        "nothing here",
    ]
    primary = [residue.redact_text(residue.PlainIndex([person]), v)[0] for v in values]
    finder = MentionFinder(key, frozenset(person.pseudonyms(key)))
    frame, hits = finder.redact_columns(pa.table({"body": values}), ["body"])
    assert frame.column("body").to_pylist() == primary
    assert hits == 4
    assert primary[0] == "Ask [erased] or [erased], not asha.rao@example.community"
    # The IP-only value is truncated as the SQL strategy truncates the inet it came from.
    assert primary[1] == _sql_masked(db_url, "inet", ["203.0.113.77"], "truncate_ip")[0]
