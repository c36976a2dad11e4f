"""Erasure requests against a real database: reference and reason refuse identifier-shaped text."""

from __future__ import annotations

import psycopg2
import pytest
from lethe.cli import main

pytestmark = pytest.mark.integration


def _rows(url: str, q: str) -> list[tuple[object, ...]]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(q)
        return cur.fetchall()


@pytest.mark.parametrize(
    ("reference", "shape"),
    [
        ("asha.rao@example.com", "an email address"),
        ("ticket for ASHA.RAO@EXAMPLE.COM please", "an email address"),
        ("from @asha_rao on the forum", "an @handle"),
        ("call 98765 43210", "a number written like a phone number"),
        ("+91 9000000001", "a number written like a phone number"),
        ("098765-43210", "a number written like a phone number"),
        ("(0) 20 7946 0958", "a number written like a phone number"),
    ],
)
def test_the_cli_refuses_an_identifier_in_the_reference(
    db_url: str, capsys: pytest.CaptureFixture[str], reference: str, shape: str
) -> None:
    assert main(["erasure", "submit", "--user-id", "1", "--reference", reference]) == 2
    err = capsys.readouterr().err
    assert f"the reference holds {shape}" in err
    assert reference not in err and reference.split()[-1] not in err  # the message never repeats the text
    assert _rows(db_url, "SELECT count(*) FROM erasure_requests") == [(0,)]


@pytest.mark.parametrize("reference", ["T-2026-000123", "INC0012345678", "case #4411", "GDPR/2026/0042", "T-7"])
def test_ticket_numbers_are_accepted(db_url: str, reference: str) -> None:
    assert main(["erasure", "submit", "--user-id", "1", "--reference", reference]) == 0
    assert _rows(db_url, "SELECT reference FROM erasure_requests") == [(reference,)]


def test_the_reason_is_checked_too_and_an_empty_identifier_is_refused_plainly(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["erasure", "submit", "--user-id", "1", "--reason", "she wrote from asha@example.com"]) == 2
    assert "the reason holds an email address" in capsys.readouterr().err
    assert main(["erasure", "submit", "--email", ""]) == 2
    assert "--email: the identifier for kind email is empty" in capsys.readouterr().err


def test_a_failed_request_names_the_table_and_constraint_a_database_error_was_about(db_url: str) -> None:
    """Found from outside: a request that failed on a CHECK, a too-short varchar or a generated column said only
    `erase: CheckViolation`; the names PostgreSQL attaches to the error (never its message, which can quote the
    row) now say where."""
    from lethe.erasure.tasks import _reason

    conn = psycopg2.connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE notes (body text CONSTRAINT notes_body_short CHECK (length(body) < 5))")
            with pytest.raises(psycopg2.errors.CheckViolation) as caught:
                cur.execute("INSERT INTO notes VALUES ('asha.rao@example.com')")
    finally:
        conn.rollback()
        conn.close()
    reason = _reason("erase", caught.value)
    assert reason == "erase: CheckViolation (table notes, constraint notes_body_short)"


def test_the_placeholder_row_goes_into_a_subject_table_keyed_by_an_identity_column(db_url: str) -> None:
    """Found from outside: with `person_id bigint GENERATED ALWAYS AS IDENTITY`, every erasure re-pointing kept
    rows to the placeholder failed (`erase: GeneratedAlways`): PostgreSQL refuses a given value for such a key."""
    from types import SimpleNamespace

    from lethe.erasure.execute import ensure_placeholder

    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE people (person_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text)")
        policy = SimpleNamespace(subject=SimpleNamespace(table="people", key="person_id", placeholder="0"))
        ensure_placeholder(cur, policy)  # type: ignore[arg-type]
        ensure_placeholder(cur, policy)  # type: ignore[arg-type]  # once only
        cur.execute("SELECT person_id, email FROM people")
        assert cur.fetchall() == [(0, None)]
