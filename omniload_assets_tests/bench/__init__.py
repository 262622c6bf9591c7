"""``python -m omniload_assets_tests.bench`` (``make bench``): throughput, memory and merge figures.

Each measured run is its own process, so its peak RSS is its own; the simulator serves from another
process (pre-built, so that serving costs it little CPU) with Klaviyo's latency and rate limits.
"""
