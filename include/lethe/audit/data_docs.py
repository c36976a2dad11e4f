"""GX Data Docs of each audit: built from the run's validation results, published to the evidence bucket.

Every suite of the run (the SQL suites the Checkpoint ran in PostgreSQL, and the frames of the
other tasks) is one validation result in a GX store; GX renders the site (index, one page per
validation, the suites) into a local directory, and the files go to the evidence bucket under
`data-docs/<database>/<run>/`. The run's row in `audit_runs` keeps that prefix (`data_docs`), and
`fetch` serves a file of it to the compliance page, which authenticates the reader: the bucket is
never linked directly. The results hold counts only (lethe.quality.RESULT_FORMAT, scrubbed).
"""

from __future__ import annotations

import mimetypes
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg2.extensions

from lethe.quality import quiet_gx

PREFIX = "data-docs"
SITE = "lethe_audit"
INDEX = "index.html"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def site_prefix(database: str, run_id: str) -> str:
    """Where one run's site lives in the evidence bucket (run ids carry ':' and '+')."""
    return f"{PREFIX}/{_UNSAFE.sub('_', database)}/{_UNSAFE.sub('_', run_id) or 'run'}/"


def build(run_id: str, results: list[dict[str, Any]], out_dir: Path, run_time: datetime | None = None) -> Path:
    """Render the Data Docs of one audit run from its suites' GX validation results; returns the index."""
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    run_time = run_time or datetime.now(UTC)
    with quiet_gx():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        context.add_data_docs_site(
            SITE,
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,  # type: ignore[typeddict-unknown-key]  # SiteBuilder takes it
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        schema = ExpectationSuiteValidationResultSchema()
        seen: set[str] = set()
        for result in results:
            for n, data in enumerate(result.get("validations") or []):
                validation = schema.load(data)
                name = validation.suite_name
                if name not in seen:
                    seen.add(name)
                    expectations = []
                    for r in validation.results:
                        if r.expectation_config is not None:
                            expectation = r.expectation_config.to_domain_obj()
                            expectation.id = None  # a copy for this suite, not the validated suite's own
                            expectations.append(expectation)
                    context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
                key = ValidationResultIdentifier(
                    expectation_suite_identifier=ExpectationSuiteIdentifier(name=name),
                    run_id=RunIdentifier(run_name=run_id, run_time=run_time),
                    batch_identifier=f"{result['suite']}-{n}",
                )
                context.validation_results_store.set(key, validation)
        context.build_data_docs(site_names=[SITE])
    return out_dir / INDEX


def publish(client: Any, bucket: str, prefix: str, site: Path) -> int:
    """Upload every file of a built site under `prefix`; the number of files."""
    count = 0
    # GX's animated how-to images (3 MB) are on no page Lethe builds (how-to buttons are off).
    for path in sorted(p for p in site.rglob("*") if p.is_file() and p.suffix != ".gif"):
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        client.put_object(
            Bucket=bucket,
            Key=prefix + path.relative_to(site).as_posix(),
            Body=path.read_bytes(),
            ContentType=content_type,
        )
        count += 1
    return count


def build_and_publish(db_url: str, endpoint_url: str | None, run_id: str, results: list[dict[str, Any]]) -> str:
    """Build the run's Data Docs and publish them to the evidence bucket; the site's prefix there."""
    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.db import transaction
    from lethe.storage import s3_client

    with transaction(db_url) as cur:
        cur.execute("SELECT current_database()")
        database = str(cur.fetchone()[0])  # type: ignore[index]
    prefix = site_prefix(database, run_id)
    with tempfile.TemporaryDirectory(prefix="lethe-data-docs-") as tmp:
        site = Path(tmp)
        build(run_id, results, site)
        publish(s3_client(PRIMARY_REGION, endpoint_url), BUCKETS.evidence, prefix, site)
    return prefix


def link(cur: psycopg2.extensions.cursor, run_id: str | None = None) -> str | None:
    """The Data Docs prefix of an audit run (the latest with Data Docs when `run_id` is None)."""
    if run_id is None:
        cur.execute("SELECT data_docs FROM audit_runs WHERE data_docs IS NOT NULL ORDER BY audited_at DESC LIMIT 1")
    else:
        cur.execute("SELECT data_docs FROM audit_runs WHERE run_id = %s", (run_id,))
    row = cur.fetchone()
    return row[0] if row else None


def safe_path(path: str) -> str | None:
    """A relative path inside a site, or None for anything that could leave it."""
    parts = PurePosixPath(path or INDEX).parts
    if not parts or any(p in ("..", ".", "") or p.startswith("/") or "\\" in p for p in parts):
        return None
    return "/".join(parts)


def fetch(db_url: str, endpoint_url: str | None, run_id: str, path: str) -> tuple[bytes, str] | None:
    """One file of a run's Data Docs (body, content type), or None when there is no such file."""
    from botocore.exceptions import ClientError

    from lethe.config import BUCKETS, PRIMARY_REGION
    from lethe.db import transaction
    from lethe.storage import s3_client

    relative = safe_path(path)
    if relative is None:
        return None
    with transaction(db_url) as cur:
        prefix = link(cur, run_id)
    if prefix is None:
        return None
    try:
        answer = s3_client(PRIMARY_REGION, endpoint_url).get_object(Bucket=BUCKETS.evidence, Key=prefix + relative)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    content_type = answer.get("ContentType") or mimetypes.guess_type(relative)[0] or "application/octet-stream"
    return answer["Body"].read(), content_type
