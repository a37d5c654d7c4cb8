"""A synthetic CPU neighbour: busy ``--duty`` of every 10 ms over a ~30 MB working set, until killed.

The gateway-under-ingest phase's control (``ingest_bench.py --control-load CORES``): it runs in
place of the flood, with no Redis, no store and no disk I/O, so a change in the gateway's added
TTFT under it comes from sharing the host's CPUs, not from anything the ingest pipeline does.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duty", type=float, default=1.0, help="busy share of each 10 ms period (0-1]")
    duty = min(max(p.parse_args().duty, 0.01), 1.0)
    period = 0.010
    data = [{"a": i, "b": str(i)} for i in range(300_000)]  # touched in slices: a cache footprint like real work
    start = 0
    while True:
        t0 = time.monotonic()
        while time.monotonic() - t0 < period * duty:
            for item in data[start:start + 20_000]:
                item["a"] += 1
            start = (start + 20_000) % len(data)
        if duty < 1.0:
            time.sleep(period * (1.0 - duty))


if __name__ == "__main__":
    main()
