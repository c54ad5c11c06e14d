"""A test hook: stop a process at a named point, so that a test signals it exactly there and
never on a timer (a process that has already finished cannot be interrupted).

``RHO_TEST_HOLD=POINT:N:FILE``: the Nth time the process passes ``hold(POINT)`` it writes its PID
to FILE, then waits there until FILE is removed (or a signal ends the wait). Unset, as outside
the tests, ``hold`` returns at once.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

HOLD_ENV = "RHO_TEST_HOLD"
_passes: Counter = Counter()


def hold(point: str) -> None:
    spec = os.environ.get(HOLD_ENV)
    if not spec or not spec.startswith(point + ":"):
        return
    _, n, file = spec.split(":", 2)
    _passes[point] += 1
    if _passes[point] != int(n):
        return
    Path(file).write_text(f"{os.getpid()}\n")
    while Path(file).exists():
        time.sleep(0.01)
