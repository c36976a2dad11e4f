"""`lethe demo`: a fresh demo database, seeded, and every DAG run in its natural order.

Each DAG that exists in dags/ runs once with dag.test(); its feature package's
demo module (lethe.<feature>.demo) may give the run conf and prints a summary.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from types import ModuleType

from lethe import airflow_env
from lethe.config import BUCKETS
from lethe.embedded import services
from lethe.ledger_anchor import LOCK_MODE_ENV, RETAIN_DAYS_ENV
from lethe.processors.local import LocalProcessors

DEMO_DATABASE = "lethe_demo"

# (dag_id, feature package whose demo module gives conf/summary), in the order a night runs them.
STEPS = (
    ("retention_nightly", "lethe.retention"),
    ("backup_nightly", "lethe.backup"),
    ("subject_erasure", "lethe.erasure"),
    ("backup_erasure_propagation", "lethe.backup"),
    ("usage_sharing", "lethe.sharing"),
    ("airflow_metadata_cleanup", "lethe.ops"),
    ("compliance_audit", "lethe.audit"),  # last: its verdict covers everything above
)


def _demo_module(package: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{package}.demo")
    except ModuleNotFoundError:
        return None


def run_demo(users: int = 2000) -> int:
    from lethe.dagrun import DagRunFailed, run_dag
    from lethe.db import recreate_database
    from lethe.seed import seed
    from lethe.testing import empty_buckets

    # The demo empties its buckets and recreates its database: never the deployment's own,
    # even when LETHE_* point at real services.
    os.environ["LETHE_BUCKET_PREFIX"] = f"{BUCKETS.prefix}-demo"
    # Each demo recreates its database, so the last demo's ledger anchors must go with its buckets:
    # lock them in governance mode for a day (emptying bypasses it), never in compliance mode for years.
    os.environ[LOCK_MODE_ENV] = "GOVERNANCE"
    os.environ[RETAIN_DAYS_ENV] = "1"
    with services() as (server_url, s3_url), LocalProcessors() as processors:
        db_url = recreate_database(server_url, DEMO_DATABASE)
        empty_buckets(s3_url)
        print(f"Lethe demo: database {DEMO_DATABASE!r}, buckets {BUCKETS.prefix}-*")
        airflow_env.configure(db_url, s3_url)
        _use_local_processors(processors)
        airflow_env.migrate_metadata()
        started = time.perf_counter()
        counts = seed(db_url, users)
        print(f"seeded {sum(counts.values()):,} rows for {users:,} people in {time.perf_counter() - started:.1f} s")
        failures = 0
        for dag_id, package in STEPS:
            if not (airflow_env.DAGS_FOLDER / f"{dag_id}.py").exists():
                continue
            module = _demo_module(package)
            conf = module.conf(db_url) if module and hasattr(module, "conf") else {}
            if dag_id == "subject_erasure" and conf.get("identifier_kind") == "email":
                processors.subscribe(conf["identifier"], ses_regions())  # as the platform would have
            print(f"\n== {dag_id}")
            started = time.perf_counter()
            try:
                run_dag(dag_id, conf)
                print(f"   success in {time.perf_counter() - started:.1f} s")
            except DagRunFailed as exc:
                failures += 1
                print(f"   FAILED: {exc}")
            if module and hasattr(module, "summary"):
                for line in module.summary(db_url, s3_url):
                    print(f"   {line}")
        print(f"\nLethe demo finished: {'all DAGs succeeded' if not failures else f'{failures} DAG(s) failed'}")
        return 1 if failures else 0


def _use_local_processors(processors: LocalProcessors) -> None:
    """Point the policy's processor connections at the demo's local stand-ins (never at a real provider)."""
    os.environ.update(processor_env(processors))
    os.environ.setdefault("LETHE_PROCESSOR_RETRY_SECONDS", "1")
    print(f"processors: local stand-ins for SES, Mixpanel and Mailchimp at {processors.url}")


def processor_env(processors: LocalProcessors) -> dict[str, str]:
    """AIRFLOW_CONN_* for each processor connection, pointing at the stand-ins."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(c) for conn_id, c in processors.connections().items()}


def ses_regions() -> list[str]:
    from lethe.policy import load_policy

    return sorted({r for p in load_policy().processors.values() if p.connector == "aws_sesv2" for r in p.regions})
