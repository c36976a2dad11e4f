"""Run one backup job in this process and kill the process (os._exit, no cleanup) right after a given step.

    python backup_kill.py propagate STEP REGION ENDPOINT KEY
    python backup_kill.py snapshot PUTS REGION ENDPOINT KEY SNAPSHOT_ID

`propagate`: lethe.backup.propagate.propagate_region, killed when its step function STEP (one of
propagate.STEPS) first returns. `snapshot`: lethe.backup.snapshot.take_snapshot, killed after its
PUTS-th object upload, mid-export. The database comes from LETHE_DATABASE_URL. Exit code KILLED
means the kill happened; any other code means the step was never reached.
"""

from __future__ import annotations

import os
import sys
from typing import Any

KILLED = 97


def _kill_after(module: Any, name: str, calls: int = 1) -> None:
    original = getattr(module, name)
    seen = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen["n"] += 1
        if seen["n"] >= calls:
            os._exit(KILLED)  # like a SIGKILL: no finally, no rollback, no connection closed politely
        return result

    setattr(module, name, wrapper)


def main(argv: list[str]) -> int:
    db_url = os.environ["LETHE_DATABASE_URL"]
    job, arg, region, endpoint, key = argv[:5]
    if job == "propagate":
        from lethe.backup import propagate

        if arg not in propagate.STEPS:
            raise SystemExit(f"unknown step {arg!r}; steps: {', '.join(propagate.STEPS)}")
        _kill_after(propagate, arg)
        propagate.propagate_region(db_url, region, endpoint, key=key.encode())
        return 0
    if job == "snapshot":
        from lethe.backup import snapshot, store
        from lethe.policy import load_policy

        _kill_after(store, "put_file", int(arg))
        snapshot.take_snapshot(db_url, region, endpoint, argv[5], load_policy(), key.encode())
        return 0
    raise SystemExit(f"unknown job {job!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
