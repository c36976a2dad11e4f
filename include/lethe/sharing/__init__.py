"""usage_sharing: aggregated, anonymous releases of usage and visitor data to third parties.

One module per concern: config (recipients), query (consent, generalisation and
bounded cells as one PostgreSQL statement), aggregate (the cells' shape), protect (k, noise), budget
(privacy ledger), gate (Great Expectations release gate), release (S3 objects),
pipeline (one run, watermarks), cli, demo.
"""
