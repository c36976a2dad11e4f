"""Erasure certificates: JSON (the record) and Markdown rendered from it, in the evidence bucket.

A certificate names the request (id, reference), the subject pseudonym, per
table what happened and how many rows, what was kept and on which legal
basis, the checks that passed, and one backup_propagation entry per backup
region (filled in later by backup_erasure_propagation). Never a raw identifier.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from lethe.config import BACKUP_REGIONS, BUCKETS, PRIMARY_REGION

SCHEMA_VERSION = 1

ERASED_KEEPING = (
    "Erased, except what the law requires to keep: the rows and columns listed under "
    '"Retained, and why", linked by the keyed pseudonym below.'
)
_OUTCOME_TEXT = {
    "erased": "Erased. Only the keyed pseudonym below remains, as the record of the removal.",
    "held": "Held. An active legal hold keeps the person's rows until it is released; the request stays open "
    "and is retried by the nightly batch.",
    "no_data": "No data found: no person matches the identifier given.",
    "already_erased": "Already erased: a tombstone from an earlier request matches the identifier.",
    "same_subject": "Same person as another request in the same batch; erased under that request.",
}


def json_key(request_id: str) -> str:
    return f"certificates/{request_id}.json"


def markdown_key(request_id: str) -> str:
    return f"certificates/{request_id}.md"


def build(
    request: dict[str, Any],
    policy_version: str,
    issued_at: datetime | None = None,
    processors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate of one processed request, from its row (no identifier is read from it);
    `processors` is each processor's receipt (lethe.processors.workflow.certificate_entries)."""
    detail = request.get("detail") or {}
    tables = detail.get("tables") or {}
    retained = {
        t: {
            "action": v["action"],
            "rows": v["rows"],
            "legal_basis": v.get("legal_basis"),
            "because": v.get("retained_because"),
            "masked_columns": v.get("columns") or {},
            "kept_columns": v.get("kept_columns") or {},
        }
        for t, v in tables.items()
        if v["action"] != "delete"
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "request_id": request["request_id"],
        "reference": request.get("reference"),
        "identifier_kind": request.get("kind"),
        "subject_pseudonym": request.get("subject_pseudonym"),
        "outcome": detail.get("outcome", "no_data"),
        "received_at": _iso(request.get("received_at")),
        "due_at": _iso(request.get("due_at")),
        "issued_at": _iso(issued_at or datetime.now(UTC)),
        "policy_version": policy_version,
        "primary_region": PRIMARY_REGION,
        "tables": {t: {"action": v["action"], "rows": v["rows"]} for t, v in tables.items()},
        "rows_total": sum(int(v["rows"]) for v in tables.values()),
        "redactions": detail.get("redactions") or {},
        "footprint": detail.get("footprint") or {},
        "residue_handled": detail.get("residue") or {},
        "retained": retained,
        "legal_holds": detail.get("legal_holds") or [],
        "checks": detail.get("checks") or {},
        "after_hold": detail.get("after_hold") or {},
        "backup_propagation": {region: {"status": "pending"} for region in BACKUP_REGIONS},
        "processors": processors or {},
    }


def _outcome_text(cert: dict[str, Any]) -> str:
    """Never 'only the pseudonym remains' when kept rows keep personal columns."""
    outcome = cert.get("outcome", "")
    if outcome == "erased" and any((v.get("kept_columns") or {}) for v in (cert.get("retained") or {}).values()):
        return ERASED_KEEPING
    return _OUTCOME_TEXT.get(outcome, f"Outcome: {outcome}")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _check_lines(checks: dict[str, Any]) -> list[str]:
    lines = []
    for name, result in sorted(checks.items()):
        if isinstance(result, dict) and "success" in result:
            mark = "passed" if result["success"] else "FAILED: " + ", ".join(result.get("failed") or [])
            lines.append(f"- {name.replace('_', ' ')}: {mark}")
    return lines


def render_markdown(cert: dict[str, Any]) -> str:
    """The human-readable page of a certificate; re-rendered whenever the JSON changes."""
    out = [
        f"# Erasure certificate {cert['request_id']}",
        "",
        _outcome_text(cert),
        "",
        "| | |",
        "| --- | --- |",
        f"| Request | `{cert['request_id']}` |",
        f"| Reference | {cert.get('reference') or '-'} |",
        f"| Identifier kind | {cert.get('identifier_kind') or '-'} |",
        f"| Subject pseudonym (HMAC-SHA256) | `{cert.get('subject_pseudonym') or '-'}` |",
        f"| Received | {cert.get('received_at') or '-'} |",
        f"| Due | {cert.get('due_at') or '-'} |",
        f"| Issued | {cert.get('issued_at') or '-'} |",
        f"| Policy version | {cert.get('policy_version') or '-'} |",
        "",
        f"## Primary database ({cert.get('primary_region', PRIMARY_REGION)})",
        "",
    ]
    tables = cert.get("tables") or {}
    if tables:
        out += ["| Table | Action | Rows |", "| --- | --- | ---: |"]
        out += [f"| {t} | {v['action']} | {v['rows']} |" for t, v in tables.items()]
        out += ["", f"Rows in total: {cert.get('rows_total', 0)}."]
    else:
        out.append("No rows of the person were found.")
    redactions = cert.get("redactions") or {}
    if redactions:
        out += ["", "Mentions redacted in other people's free text:", ""]
        out += [f"- {column}: {n} row(s)" for column, n in sorted(redactions.items())]
    found = cert.get("residue_handled") or {}
    waiting = {w.split(":", 1)[1]: n for w, n in found.items() if w.startswith("waiting_for_hold:")}
    after = {w: n for w, n in found.items() if w.split(":", 1)[0].endswith("_after_hold")}
    handled = {w: n for w, n in found.items() if not w.startswith("waiting_for_hold:") and w not in after}
    if handled:
        out += ["", "Also found by value (the residue scanner) and handled:", ""]
        out += [f"- {what.replace(':', ' ', 1)}: {n} row(s)" for what, n in sorted(handled.items())]
    if waiting:
        out += [
            "",
            "Left unchanged: rows of other people under an active legal hold that still hold this person's data "
            "(evidence, which no one else's erasure may change):",
            "",
        ]
        out += [f"- {column}: {n} row(s)" for column, n in sorted(waiting.items())]
    if after:
        record = cert.get("after_hold") or {}
        when = record.get("completed_at") or record.get("last_at") or "-"
        done = "Completed" if record.get("completed_at") else "Partly completed"
        out += ["", f"{done} after the legal hold's release ({when}): rows of other people that waited for it:", ""]
        out += [
            f"- {what.split(':', 1)[1]}: {n} row(s) {what.split(':', 1)[0].removesuffix('_after_hold')}"
            for what, n in sorted(after.items())
        ]
    retained = cert.get("retained") or {}
    if retained:
        out += [
            "",
            "## Retained, and why",
            "",
            "| Table | Kept as | Rows | Legal basis | Why |",
            "| --- | --- | ---: | --- | --- |",
        ]
        out += [
            f"| {t} | {v['action']} | {v['rows']} | {v.get('legal_basis') or '-'} | {v.get('because') or '-'} |"
            for t, v in retained.items()
        ]
    for t, v in retained.items():
        kept = v.get("kept_columns") or {}
        out += ["", f"{t} keeps only: " + (", ".join(sorted(kept)) or "no personal column") + "."]
        out += [f"- {column}: {why}" for column, why in sorted(kept.items())]
        masked = v.get("masked_columns") or {}
        if masked:
            out.append("- masked: " + ", ".join(f"{c} ({how})" for c, how in sorted(masked.items())))
    if cert.get("legal_holds"):
        out += ["", f"Active legal holds: {', '.join(str(h) for h in cert['legal_holds'])}."]
    checks = _check_lines(cert.get("checks") or {})
    out += ["", "## Checks", ""] + (checks or ["- none run (nothing was erased)"])
    out += _processor_lines(cert.get("processors") or {})
    out += ["", "## Backup propagation", "", "| Region | Status | Details |", "| --- | --- | --- |"]
    for region, entry in sorted((cert.get("backup_propagation") or {}).items()):
        extra = ", ".join(f"{k}: {v}" for k, v in entry.items() if k != "status") or "-"
        out.append(f"| {region} | {entry.get('status', '?')} | {extra} |")
    out.append("")
    return "\n".join(out)


def _processor_lines(processors: dict[str, Any]) -> list[str]:
    if not processors:
        return []
    out = ["", "## Processors", "", "| Processor | Status | Provider job id | At | Calls | Details |"]
    out.append("| --- | --- | --- | --- | ---: | --- |")
    for name, r in sorted(processors.items()):
        details = ", ".join(f"{k}: {v}" for k, v in sorted((r.get("detail") or {}).items()))
        details = "; ".join(x for x in (details, r.get("error") or "") if x) or "-"
        out.append(
            f"| {name} | {r.get('status', '?')} | {r.get('job_id') or '-'} | {r.get('at') or '-'} "
            f"| {r.get('attempts', 0)} | {details} |"
        )
    return out


def write(client: Any, cert: dict[str, Any]) -> tuple[str, str]:
    """Put the JSON and the Markdown in the evidence bucket; return both keys.

    A rewrite keeps a backup_propagation section that the backup DAG already filled in.
    """
    bucket = BUCKETS.evidence
    key = json_key(cert["request_id"])
    try:
        previous = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        cert["backup_propagation"] = {**cert["backup_propagation"], **(previous.get("backup_propagation") or {})}
    except client.exceptions.NoSuchKey:
        pass
    client.put_object(
        Bucket=bucket, Key=key, Body=json.dumps(cert, indent=2, sort_keys=True).encode(), ContentType="application/json"
    )
    client.put_object(
        Bucket=bucket,
        Key=markdown_key(cert["request_id"]),
        Body=render_markdown(cert).encode(),
        ContentType="text/markdown; charset=utf-8",
    )
    return key, markdown_key(cert["request_id"])


def read(client: Any, request_id: str) -> dict[str, Any]:
    body = client.get_object(Bucket=BUCKETS.evidence, Key=json_key(request_id))["Body"].read()
    return dict(json.loads(body))
