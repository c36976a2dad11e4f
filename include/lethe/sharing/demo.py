"""What `lethe demo` prints after usage_sharing ran: each recipient's latest release (no personal data)."""

from __future__ import annotations

from lethe.db import transaction


def summary(db_url: str, s3_endpoint: str) -> list[str]:
    from lethe.sharing.release import load_latest_release

    lines = []
    with transaction(db_url) as cur:
        cur.execute(
            "SELECT DISTINCT ON (recipient) recipient, release_id, status, days, cells_total, cells_published,"
            " cells_suppressed, epsilon_spent, message FROM sharing_releases ORDER BY recipient, created_at DESC"
        )
        rows = cur.fetchall()
        cur.execute("SELECT source_table, aggregated_until FROM aggregation_watermarks ORDER BY source_table")
        marks = cur.fetchall()
    if not rows:
        return ["no release was made"]
    for recipient, release_id, status, days, total, _published, suppressed, epsilon, message in rows:
        if status != "published":
            lines.append(f"{recipient}: release {release_id} {status}: {message}")
            continue
        loaded = load_latest_release(recipient, s3_endpoint)
        shape = f"{loaded.frame.shape[0]} rows x {loaded.frame.shape[1]} columns" if loaded else "not found in S3"
        lines.append(
            f"{recipient}: release {release_id}, {days} day(s), {shape}; {suppressed} of {total} cells suppressed"
            f" (fewer than k people){f', epsilon {epsilon:g} spent' if epsilon else ''}"
        )
    lines += [f"watermark {table}: aggregated until {until:%Y-%m-%d %H:%M} UTC" for table, until in marks]
    return lines
