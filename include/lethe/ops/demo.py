"""What the demo prints after airflow_metadata_cleanup ran: counts from its last ledger entry."""

from __future__ import annotations

from typing import Any

from lethe.ops.cleanup import LEDGER_KIND


def conf(db_url: str) -> dict[str, Any]:
    """The demo's erasure ran seconds ago: forget its request now instead of after a day."""
    return {"erasure_conf_retention": "PT0S"}


def summary(db_url: str, s3_endpoint: str) -> list[str]:
    from lethe.db import transaction

    with transaction(db_url) as cur:
        cur.execute("SELECT payload FROM ledger WHERE kind = %s ORDER BY entry_id DESC LIMIT 1", (LEDGER_KIND,))
        row = cur.fetchone()
    if row is None:
        return ["airflow_metadata_cleanup: no run recorded in the ledger"]
    payload: dict[str, Any] = row[0]
    erasure, expired = payload.get("erasure_requests", {}), payload.get("expired", {})
    verb = "would remove" if payload.get("dry_run") else "removed"
    rows = sum(v for k, v in expired.items() if k.endswith("_rows"))
    return [
        f"airflow_metadata_cleanup {verb} from finished erasure runs: {erasure.get('confs', 0)} run confs, "
        f"{erasure.get('xcoms', 0)} XComs, {erasure.get('rendered_fields', 0)} rendered-field records, "
        f"{erasure.get('audit_entries', 0)} audit-log details, {erasure.get('log_files', 0)} log files",
        f"airflow_metadata_cleanup {verb} past retention: {rows} metadata rows "
        f"({expired.get('dag_run_rows', 0)} DAG runs), {expired.get('log_files', 0)} log files",
    ]
