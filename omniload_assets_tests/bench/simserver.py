"""A benchmark's simulator process: build, serve, and obey one-line commands on stdin.

Prints ``{"url": ...}`` once serving. Commands: ``limits on|off`` (also forgets counted requests),
``latency FACTOR``,
``stats`` (prints a JSON line), ``count TABLE START END`` (ids in a window), ``quit``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from omniload_assets_tests.simulator import KlaviyoSimulator


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m omniload_assets_tests.bench.simserver")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--profiles", type=int, required=True)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--end", type=datetime.fromisoformat, required=True)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--warm", type=int, default=2, help="processes building the data up front")
    args = parser.parse_args()
    sim = KlaviyoSimulator(
        seed=args.seed,
        scale={"events": args.events, "profiles": args.profiles},
        latency=args.latency,
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
                }
            elif words[0] == "count":
                table, start, end = (
                    words[1],
                    datetime.fromisoformat(words[2]),
                    datetime.fromisoformat(words[3]),
                )
                reply = {"count": len(sim.ids(table, start, end))}
            else:
                reply = {"error": f"unknown command {words[0]!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
