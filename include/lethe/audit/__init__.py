"""compliance_audit: checks that what the other DAGs promise actually holds.

One module per domain (primary, backups, shares, ledger_checks), each returning
lethe.quality CheckResults; results.py keeps them, alerts.py raises alerts,
dashboard.py gathers what the compliance page shows.
"""
