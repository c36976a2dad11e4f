"""A night's digests writer let go on a failed night (lethe.backup.digest_state.Writer.discard)."""

from __future__ import annotations

import gc
import sys
from typing import Any

import numpy as np
import pytest
from lethe.backup import digest_state


def test_a_discarded_writer_leaves_nothing_to_fail_when_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    raised: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", raised.append)
    writer = digest_state.Writer()
    writer.add(3, np.arange(10, dtype=np.uint64))
    writer.discard()
    del writer
    gc.collect()
    assert raised == []
