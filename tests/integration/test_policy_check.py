"""`lethe policy check` against a live schema: passes as shipped, fails located on each drift."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from lethe.cli import main
from lethe.config import DEFAULT_POLICY_FILE
from lethe.policy import load_policy
from lethe.policy.check import check

pytestmark = pytest.mark.integration
SHIPPED = DEFAULT_POLICY_FILE.read_text()


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["policy", "check", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_shipped_policy_passes(db_url: str, s3_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_check(capsys)
    assert code == 0, output
    assert "valid and matches the live schema" in output


def test_unknown_table(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(SHIPPED.replace("  comments:\n", "  comment_archive:\n", 1))
    problems = check(load_policy(path), db_url)
    assert any(p.startswith(f"{path}:") and "tables.comment_archive: unknown table" in p for p in problems)
    # the real table is now uncovered, and that is reported too
    assert any("table 'comments' exists in the database but no rule of the policy covers it" in p for p in problems)


def test_unknown_column(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(SHIPPED.replace("public_key: ssh_key,", "public_key: ssh_key, fingerprint: ssh_key,", 1))
    problems = check(load_policy(path), db_url)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "fingerprint" in text)
    assert f"{path}:{line}: tables.ssh_keys.columns.fingerprint: unknown column" in problems


def test_unclassified_new_column(db_url: str) -> None:
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE accounts ADD COLUMN date_of_birth date")
    problems = [p for p in check(load_policy(), db_url) if "date_of_birth" in p]
    assert len(problems) == 1
    assert "tables.accounts.columns: column 'date_of_birth' exists in the database but is not classified" in problems[0]
    lines = SHIPPED.splitlines()
    start = lines.index("  accounts:")
    line = next(i for i in range(start, len(lines)) if lines[i] == "    columns:") + 1
    assert problems[0].startswith(f"{DEFAULT_POLICY_FILE}:{line}:")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("keep: P0D, after: expires_at", "keep: soon, after: expires_at", "not an ISO-8601 duration"),
        ("      - {name: closed_disputes, keep: P6Y, after: closed_at, action: delete}\n", "", "missing retention"),
    ],
)
def test_cli_reports_file_errors_plainly(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(SHIPPED.replace(old, new, 1))
    code, output = run_check(capsys, "--file", str(path))
    assert code == 2
    assert output.startswith(f"lethe policy: {path}:")
    assert expected in output
    assert "Traceback" not in output
