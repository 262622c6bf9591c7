"""Injected faults: transient 5xx and 429s, slow responses, dropped/truncated bodies, loops."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

KINDS = frozenset({"500", "502", "503", "504", "429", "slow", "drop", "truncate", "repeat_cursor"})


@dataclass
class Fault:
    """One armed fault.

    ``rate`` is the probability per matching request; ``count`` (if set) how many more times it
    fires; ``path`` limits it to one endpoint. ``retry_after`` is the 429's ``Retry-After``,
    ``seconds`` how long ``slow`` stalls, ``malformed`` makes ``truncate`` send a complete
    response whose JSON is broken instead of a short one. ``after`` lets that many matching
    requests through first, so a fault can strike mid-run. ``fired`` is set the first time it
    fires, so a test can wait for "the server has started failing" instead of sleeping.
    """

    kind: str
    rate: float = 1.0
    count: int | None = None
    path: str | None = None
    retry_after: int = 1
    seconds: float = 30.0
    malformed: bool = False
    #: Let this many matching requests through before the fault starts firing.
    after: int = 0
    #: Set the first time the fault fires (not compared, not in ``repr``).
    fired: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


class FaultInjector:
    """Decides, per request, which armed fault (if any) fires; deterministic from the seed."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        if fault.kind not in KINDS:
            raise ValueError(f"unknown fault kind {fault.kind!r}; valid: {', '.join(sorted(KINDS))}")
        if not 0.0 <= fault.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pick(self, path: str, concrete: str | None = None) -> Fault | None:
        """The fault to inject on a request for ``path`` (``/api/events``, or a nested endpoint's
        template ``/api/lists/{id}/profiles`` with the ``concrete`` path requested), or None."""
        with self._lock:
            for fault in self._faults:
                if fault.path is not None and fault.path not in (path, concrete):
                    continue
                if fault.count is not None and fault.count <= 0:
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.rate < 1.0 and self._rng.random() >= fault.rate:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                fault.fired.set()
                return fault
            self._faults = [f for f in self._faults if f.count is None or f.count > 0]
        return None
