"""What `lethe demo` prints after compliance_audit ran: each suite's result, then the verdict."""

from __future__ import annotations


def summary(db_url: str, s3_endpoint: str) -> list[str]:
    from lethe.audit.results import latest
    from lethe.db import transaction
    from lethe.ledger import verify_chain
    from lethe.quality import describe

    with transaction(db_url) as cur:
        runs = latest(cur, 1)
        chain = verify_chain(cur)
    if not runs:
        return ["compliance_audit: no audit recorded (the DAG did not reach its verdict)", "VERDICT: no verdict"]
    run = runs[0]
    lines = [f"compliance_audit run {run['run_id']}: {run['checks_total']} checks"]
    for suite in run["results"]:
        bad = [describe(c) for c in suite["checks"] if not c["success"]]
        state = "ok" if not bad else "FAILED " + "; ".join(bad)
        lines.append(f"  {suite['suite']:<20} {len(suite['checks']):>3} checks  {state}")
    lines.append(f"  ledger chain: {'intact' if chain.ok else 'BROKEN'} over {chain.entries} entries")
    if run["success"]:
        lines.append(f"VERDICT: the privacy policy holds ({run['checks_total']} checks passed)")
    else:
        lines.append(f"VERDICT: NOT COMPLIANT: {', '.join(run['failed'])}")
    return lines
