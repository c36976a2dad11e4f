"""Release objects in the sharing bucket: recipients/<recipient>/<release_id>/.

Each release holds cells.parquet, cells.csv, data_dictionary.md and, written
last, manifest.json: a release without a manifest is not a release (readers
ignore it, and the next run removes it).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lethe.config import BUCKETS, PRIMARY_REGION
from lethe.sharing.aggregate import normalise
from lethe.sharing.config import ALL, RecipientConfig
from lethe.storage import delete_versions

ARROW_SCHEMA = pa.schema(
    [
        ("day", pa.date32()),
        ("source", pa.string()),
        ("feature", pa.string()),
        ("region", pa.string()),
        ("device_type", pa.string()),
        ("browser_family", pa.string()),
        ("events", pa.int64()),
        ("people", pa.int64()),
        ("total_duration_ms", pa.int64()),
        ("median_duration_ms", pa.int64()),
    ]
)

COLUMN_DOCS = {
    "day": "UTC calendar day of the events (timestamps are coarsened to the day).",
    "source": "`usage`: product usage events of members; `page`: page views from the web logs.",
    "feature": "Usage: the product feature's name. Pages: the first path segment only (`/courses`), "
    "scheme, host, query string and fragment removed. A feature nobody may see any more is never published "
    "(see suppression).",
    "region": "Continent of the browser's IANA time zone (`Asia`, `Europe`, ...), else `unknown`. No IP address, "
    "city or country is used or shown.",
    "device_type": "desktop, mobile, tablet, tv, console or wearable; `other` for anything else, `unknown` if absent.",
    "browser_family": "Browser family plus major version when the user agent still carries one (`Chrome 130`); "
    "user agents are dropped from the raw logs after 7 days, so older days show the family only.",
    "events": "Events in the cell, each person counting at most max_events_per_cell of them.",
    "people": "Distinct people in the cell: members by account, anonymous visitors by browser cookie "
    "(a person with two browsers may count twice). Never below k.",
    "total_duration_ms": "Sum of event durations (each clipped to max_duration_ms, each person's events capped as "
    "above). Empty for page views and for noisy releases.",
    "median_duration_ms": "Median over the cell's people of each person's mean event duration. Empty for page views "
    "and for noisy releases.",
}

WHY_DIMENSIONS = (
    "Dimensions answer the questions the policy names (which features are used, on which devices and browsers, "
    "from which part of the world) at the coarsest level that still answers them: a day, not an hour; a "
    "continent, not an IP; a browser family and major version, not a user agent; a site section, not a URL. "
    "Each finer level multiplies the cells and so the share of suppressed ones."
)


@dataclass
class LoadedRelease:
    release_id: str
    manifest: dict[str, Any]
    frame: pd.DataFrame

    @property
    def config(self) -> RecipientConfig:
        return RecipientConfig.from_dict(self.manifest["recipient_config"])


def prefix(recipient: str, release_id: str = "") -> str:
    return f"recipients/{recipient}/" + (f"{release_id}/" if release_id else "")


def data_dictionary(manifest: dict[str, Any]) -> str:
    cfg = manifest["recipient_config"]
    lines = [
        f"# Release {manifest['release_id']} for {manifest['recipient']}",
        "",
        "Aggregated, anonymous usage statistics of the re:Skill platform (privacy policy: clause 3 and "
        "'Analytics'). No row describes a person; no identifier, IP address, cookie or user agent is included.",
        "",
        f"- Days covered: {manifest['window_start'][:10]} to {manifest['window_last_day']} (UTC), "
        f"{manifest['days']} day(s)",
        f"- Cells: {manifest['cells_published']} published, {manifest['cells_suppressed']} suppressed "
        f"of {manifest['cells_total']}",
        f"- Minimum people per published cell (k): {cfg['k']}",
        f"- Contribution bounds: at most {cfg['max_events_per_cell']} events per person per cell, "
        f"{cfg['max_cells_per_day']} cells per person per day; durations clipped to {cfg['max_duration_ms']} ms",
        f"- Dimensions broken down: {', '.join(cfg['dimensions']) or 'none'} (others show `{ALL}`)",
    ]
    if cfg["mechanism"] == "none":
        lines.append("- Noise: none (exact counts of the published cells)")
    else:
        delta = f", delta {cfg['delta']:g}" if cfg.get("delta") else ""
        lines.append(
            f"- Noise: {cfg['mechanism']}, epsilon {cfg['epsilon']:g} per day{delta} split between events and "
            f"people; this release spent epsilon {manifest['epsilon_spent']:g}. Values are rounded and made "
            "consistent after noise; cells whose noisy people fall below k are suppressed too."
        )
    lines += [
        "- Consent: only people whose analytics consent was given before the event and is neither withdrawn "
        "nor objected to at release time; anonymous visitors by cookie in page rows"
        + (" (excluded in this release)" if cfg.get("anonymous_visitors") == "exclude" else ""),
        "",
        "## Why these dimensions",
        "",
        WHY_DIMENSIONS,
        "",
        "## Columns",
        "",
        "| column | type | meaning |",
        "| --- | --- | --- |",
    ]
    for field in ARROW_SCHEMA:
        lines.append(f"| {field.name} | {field.type} | {COLUMN_DOCS[field.name]} |")
    lines += ["", "## Files", "", "cells.parquet (zstd) and cells.csv hold the same rows; manifest.json the settings."]
    return "\n".join(lines) + "\n"


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=ARROW_SCHEMA, preserve_index=False)


def write(client: Any, bucket: str, manifest: dict[str, Any], frame: pd.DataFrame) -> list[str]:
    """Upload the release's files, manifest last; return the keys written."""
    base = prefix(manifest["recipient"], manifest["release_id"])
    parquet = io.BytesIO()
    pq.write_table(_table(frame), parquet, compression="zstd")
    csv = frame.to_csv(index=False).encode()
    files = {
        "cells.parquet": parquet.getvalue(),
        "cells.csv": csv,
        "data_dictionary.md": data_dictionary(manifest).encode(),
    }
    manifest = {**manifest, "files": {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}}
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    for name, body in files.items():
        client.put_object(Bucket=bucket, Key=base + name, Body=body)
    return [base + name for name in files]


def delete(client: Any, bucket: str, key_prefix: str) -> int:
    """Remove every version of every object under the prefix (a delete marker would leave the data)."""
    removed = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key_prefix):
        removed += delete_versions(client, bucket, page.get("Versions", []) + page.get("DeleteMarkers", []))
    return removed


def release_ids(client: Any, bucket: str, recipient: str) -> list[str]:
    """Published releases of the recipient (those with a manifest), oldest first."""
    ids = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix(recipient)):
        for obj in page.get("Contents", []):
            parts = obj["Key"].split("/")
            if len(parts) == 4 and parts[3] == "manifest.json":
                ids.append(parts[2])
    return sorted(ids)


def read(client: Any, bucket: str, recipient: str, release_id: str) -> LoadedRelease:
    base = prefix(recipient, release_id)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=base + "manifest.json")["Body"].read())
    body = client.get_object(Bucket=bucket, Key=base + "cells.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    return LoadedRelease(release_id=release_id, manifest=manifest, frame=normalise(table.to_pandas()))


def load_latest_release(recipient: str, endpoint_url: str | None = None, client: Any = None) -> LoadedRelease | None:
    """The recipient's newest published release read back from the sharing bucket, or None."""
    from lethe.storage import s3_client

    client = client or s3_client(PRIMARY_REGION, endpoint_url)
    ids = release_ids(client, BUCKETS.sharing, recipient)
    return read(client, BUCKETS.sharing, recipient, ids[-1]) if ids else None
