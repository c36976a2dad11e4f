"""usage_sharing: aggregated, anonymous releases of usage and visitor data to third parties.

One module per concern: config (recipients), extract (consented raw rows),
generalise + aggregate (bounded cells, DuckDB), protect (k, noise), budget
(privacy ledger), gate (Great Expectations release gate), release (S3 objects),
pipeline (one run, watermarks), cli, demo.
"""
