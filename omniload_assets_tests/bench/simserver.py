"""A benchmark's simulator process: build, serve, and obey one-line commands on stdin.

Prints ``{"url": ...}`` once serving. Commands: ``limits on|off`` (also forgets counted requests),
``latency FACTOR``,
``stats`` (prints a JSON line, with this process's CPU seconds), ``count TABLE START END`` (ids in a
window), ``digest TABLE [START END]`` (count and SHA-256 of the sorted ids, to check a load row for
row), ``quit``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
from datetime import datetime

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
            if words[0] == "limits":
                sim.rate_limits = words[1] == "on"
                sim.reset_rate_limits()
                sim.reset_stats()
                reply: dict[str, object] = {"ok": True}
            elif words[0] == "latency":
                sim.latency = float(words[1])
                reply = {"ok": True}
            elif words[0] == "stats":
                stats = sim.stats
                reply = {
                    "requests": stats.total_requests,
                    "throttled": stats.throttled,
                    "pages": stats.pages,
                    "records": stats.records,
                    "cpu_s": cpu_s(),
                }
            elif words[0] == "count":
                table, start, end = (
                    words[1],
                    datetime.fromisoformat(words[2]),
                    datetime.fromisoformat(words[3]),
                )
                reply = {"count": len(sim.ids(table, start, end))}
            elif words[0] == "digest":
                bounds = [datetime.fromisoformat(w) for w in words[2:4]] or [None, None]
                reply = digest(sim.ids(words[1], *bounds))
            else:
                reply = {"error": f"unknown command {words[0]!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
