"""A benchmark's simulator process: build, serve, and obey one-line commands on stdin.

Prints ``{"url": ..., "api_key": ...}`` once serving, then answers each command with one JSON line
(``{"error": ...}`` for a command it cannot follow):

- ``limits on|off``: Klaviyo's rate limits on or off; also forgets the requests counted so far, for
  the limits and for ``stats``.
- ``latency FACTOR``: scale the serving time of every request.
- ``stats``: ``requests`` (total served), ``by_path`` (requests per endpoint path), ``by_status``
  (responses per HTTP status), ``faults`` (injected, per kind), ``throttled`` (429s for the rate
  limits), ``pages``, ``records``, and ``cpu_s`` (this process's CPU seconds).
- ``fault KIND [after=N] [count=N] [path=/api/events] [retry_after=S] [rate=R] [seconds=S]``: arm a
  fault (``500``/``502``/``503``/``504``, ``429``, ``slow``, ``drop``, ``truncate``,
  ``repeat_cursor``; see ``KlaviyoSimulator.set_fault``). ``after`` lets that many matching requests
  through first, counted from now; without ``count`` it fires on every later matching request.
- ``heal``: disarm every fault.
- ``count TABLE START END``: ids in a window.
- ``digest TABLE [START END]``: count and SHA-256 of the sorted ids, to check a load row for row.
- ``quit``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from omniload_assets_tests.simulator import KlaviyoSimulator


def latency_model(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    base_ms, per_record_ms = (float(part) for part in text.split(","))
    return base_ms / 1000, per_record_ms / 1000


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def digest(ids: object) -> dict[str, object]:
    """Count and SHA-256 of ids, sorted and joined by newlines (what a loaded table must match)."""
    ordered = sorted(str(i) for i in ids)  # type: ignore[attr-defined]
    return {"count": len(ordered), "sha256": hashlib.sha256("\n".join(ordered).encode()).hexdigest()}


def stats_reply(sim: KlaviyoSimulator) -> dict[str, object]:
    """The ``stats`` command's answer: the simulator's counters and this process's CPU seconds."""
    stats = sim.stats
    return {
        "requests": stats.total_requests,
        "by_path": dict(sorted(stats.requests.items())),
        "by_status": {str(status): n for status, n in sorted(stats.statuses.items())},
        "faults": dict(sorted(stats.faults.items())),
        "throttled": stats.throttled,
        "pages": stats.pages,
        "records": stats.records,
        "cpu_s": cpu_s(),
    }


#: ``fault`` options and how to read their values (``KlaviyoSimulator.set_fault``'s keywords).
FAULT_OPTIONS: dict[str, Callable[[str], Any]] = {
    "after": int,
    "count": int,
    "path": str,
    "retry_after": int,
    "rate": float,
    "seconds": float,
}


def arm_fault(sim: KlaviyoSimulator, words: list[str]) -> dict[str, object]:
    """``fault KIND [name=value ...]``: arm one fault on ``sim``; the reply repeats what was armed."""
    if len(words) < 2:
        raise ValueError("fault needs a KIND")
    options: dict[str, Any] = {}
    for word in words[2:]:
        name, sep, value = word.partition("=")
        if not sep or name not in FAULT_OPTIONS:
            raise ValueError(f"bad option {word!r}; valid: {', '.join(FAULT_OPTIONS)} as name=value")
        options[name] = FAULT_OPTIONS[name](value)
    sim.set_fault(words[1], **options)
    return {"ok": True, "fault": {"kind": words[1], **options}}


def answer(sim: KlaviyoSimulator, words: list[str]) -> dict[str, object]:
    """The reply to one command line (split in ``words``); an ``error`` for one it cannot follow."""
    try:
        return obey(sim, words)
    except (ValueError, KeyError, IndexError) as exc:
        return {"error": f"{words[0]}: {exc}"}


def obey(sim: KlaviyoSimulator, words: list[str]) -> dict[str, object]:
    """Carry out one command; raises ``ValueError``/``KeyError``/``IndexError`` on a bad one."""
    command = words[0]
    if command == "limits":
        sim.rate_limits = words[1] == "on"
        sim.reset_rate_limits()
        sim.reset_stats()
        return {"ok": True}
    if command == "latency":
        sim.latency = float(words[1])
        return {"ok": True}
    if command == "stats":
        return stats_reply(sim)
    if command == "fault":
        return arm_fault(sim, words)
    if command == "heal":
        sim.clear_faults()
        return {"ok": True}
    if command == "count":
        start, end = datetime.fromisoformat(words[2]), datetime.fromisoformat(words[3])
        return {"count": len(sim.ids(words[1], start, end))}
    if command == "digest":
        bounds = [datetime.fromisoformat(w) for w in words[2:4]] or [None, None]
        return digest(sim.ids(words[1], *bounds))
    return {"error": f"unknown command {command!r}"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m omniload_assets_tests.bench.simserver")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--profiles", type=int, default=None, help="default: the simulator's")
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--end", type=datetime.fromisoformat, required=True)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        "--latency-model",
        default=None,
        metavar="BASE_MS,PER_RECORD_MS",
        help="serving time of a request (default: the simulator's 20 ms + 0.38 ms a record)",
    )
    parser.add_argument("--warm", type=int, default=2, help="processes building the data up front")
    args = parser.parse_args()
    sim = KlaviyoSimulator(
        seed=args.seed,
        scale={"events": args.events, **({"profiles": args.profiles} if args.profiles is not None else {})},
        latency=args.latency,
        latency_model=latency_model(args.latency_model),
        rate_limits=True,
        start=args.start,
        end=args.end,
    )
    sim.warm(args.warm)
    print(json.dumps({"url": sim.start(), "api_key": sim.api_key}), flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            print(json.dumps(answer(sim, words)), flush=True)
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
