"""Processors: erase or suppress a person in the services outside the primary database.

Each processor of the policy file (`processors:`) names a connector; a connector is
one small class behind one registry (`lethe.processors.base.connector`). It erases a
person (`erase`) and says whether they are gone (`status`), returning a Receipt that
holds no identifier. `lethe.processors.workflow` runs them for subject_erasure and for
objections, and keeps their receipts in `processor_receipts` and the ledger.
"""

from lethe.processors import http, ses  # noqa: F401  (registers the connectors)
from lethe.processors.base import Credentials, Person, ProcessorUnavailable, Receipt, connector

__all__ = ["Credentials", "Person", "ProcessorUnavailable", "Receipt", "connector"]
