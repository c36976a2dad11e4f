"""usage_sharing: aggregated, anonymous releases of usage and visitor data to third parties.

One module per concern: config (recipients), extract (consented raw rows, humans not cookies),
generalise (allow-listed values) + aggregate (bounded cells, DuckDB), protect (k, or OpenDP
through measurements), budget (one budget per audience and data day), consistency (no suppressed
cell derivable across recipients), gate (Great Expectations release gate), release (S3 objects),
pipeline (one run, watermarks), cli, demo.
"""
