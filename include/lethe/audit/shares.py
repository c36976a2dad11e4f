"""The shares: each recipient's latest published release, read back from the sharing bucket,
must still pass the release gate (lethe.sharing.gate) under the policy's current settings."""

from __future__ import annotations

from lethe.quality import CheckResult, expect_counts


def check_shares(endpoint_url: str | None) -> CheckResult:
    from lethe.sharing.config import recipients
    from lethe.sharing.gate import run_gate
    from lethe.sharing.release import load_latest_release

    checks = []
    validations = []
    checked = 0
    for config in recipients():
        release = load_latest_release(config.name, endpoint_url)
        if release is None:
            continue  # nothing shared with this recipient yet: nothing to check
        checked += 1
        result = run_gate(release.frame, config)
        validations.extend(result.validations)
        for check in result.checks:
            checks.append({**check, "name": f"{config.name}.{check['name']}", "release": release.release_id})
    summary = expect_counts("shares", {"releases_checked": checked}, maximum=10**9)
    checks = summary.checks + checks
    return CheckResult(
        suite="shares",
        success=all(c["success"] for c in checks),
        checks=checks,
        validations=summary.validations + validations,
    )
