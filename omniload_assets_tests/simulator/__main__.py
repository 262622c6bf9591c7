"""``python -m omniload_assets_tests.simulator --port N``: serve a simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import UTC, datetime
from types import FrameType

from .simulator import KlaviyoSimulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m omniload_assets_tests.simulator", description="Serve a Klaviyo API simulator."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--events", type=int, default=None, help="number of events")
    parser.add_argument("--profiles", type=int, default=None, help="number of profiles")
    parser.add_argument(
        "--latency",
        nargs="?",
        type=float,
        const=1.0,
        default=0.0,
        help="simulate serving time (optionally a multiplier)",
    )
    parser.add_argument(
        "--latency-model",
        type=_latency_model,
        default=None,
        metavar="BASE_MS,PER_RECORD_MS",
        help="serving time of a request, e.g. 80,0.25 (80 ms plus 0.25 ms a record); implies --latency",
    )
    parser.add_argument("--no-rate-limits", action="store_true", help="lift Klaviyo's rate limits")
    parser.add_argument("--api-key", default="pk_test_simulator")
    parser.add_argument("--start", type=_instant, default=None, help="first instant of the data (ISO 8601)")
    parser.add_argument("--end", type=_instant, default=None, help="end of the data (ISO 8601, exclusive)")
    parser.add_argument(
        "--warm",
        nargs="?",
        type=int,
        const=1,
        default=0,
        help="build every record before serving (optionally in N processes); for benchmarks",
    )
    return parser


def _latency_model(text: str) -> tuple[float, float]:
    base_ms, per_record_ms = (float(part) for part in text.split(","))
    return base_ms / 1000, per_record_ms / 1000


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main() -> None:
    """Parse arguments, start the simulator, print its base URL, serve until signalled."""
    args = _parser().parse_args()
    scale = {}
    if args.events is not None:
        scale["events"] = args.events
    if args.profiles is not None:
        scale["profiles"] = args.profiles
    sim = KlaviyoSimulator(
        seed=args.seed,
        api_key=args.api_key,
        scale=scale or None,
        rate_limits=not args.no_rate_limits,
        latency=args.latency or args.latency_model is not None,
        latency_model=args.latency_model,
        port=args.port,
        **{name: getattr(args, name) for name in ("start", "end") if getattr(args, name) is not None},
    )
    if args.warm:
        sim.warm(args.warm)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(sim.start(), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
