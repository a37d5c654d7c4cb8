"""The simulator plus one extra model, ``sim-slow``, for the gateway memory benchmark.

``sim-slow`` streams slowly (``--token-ms`` per token) and has 4,096 slots, so 1,000 concurrent
streams are all *active* at once (none wait in the sim's queue) while the total chunk rate stays
low enough for a 2-core machine: the benchmark measures what the gateway holds per open stream,
not how fast it relays.

    python benchmarks/slow_sim.py --port 8002 --token-ms 200
"""

from __future__ import annotations

import argparse
import dataclasses
import resource

import uvicorn

from infersight.sim.app import create_sim_app
from infersight.sim.profiles import DEFAULT_PROFILES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--token-ms", type=float, default=200.0, help="decode time per token of sim-slow")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    slow = dataclasses.replace(
        DEFAULT_PROFILES["sim-bench"], ttft_base_ms=50.0, decode_ms_per_token=args.token_ms,
        jitter_ms=2.0, max_num_seqs=4096, kv_cache_blocks=1 << 20,
    )
    app = create_sim_app(seed=args.seed, profiles={**DEFAULT_PROFILES, "sim-slow": slow})
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
