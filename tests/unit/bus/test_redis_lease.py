"""``LeaseKeeper``: refreshes a slow sink call's claim, and stops once the call looks hung, so that a
consumer stuck in its sink does not keep its batch from the group for ever."""

from __future__ import annotations

import time
from typing import Any

from infersight.bus.redis_lease import HUNG_AFTER, LeaseKeeper


class Client:
    """Records XCLAIM calls (the consumer's Redis client, at the one call the keeper makes)."""

    def __init__(self) -> None:
        self.claims: list[tuple[float, list[bytes]]] = []

    def xclaim(self, stream: str, group: str, consumer: str, min_idle: int, ids: list[bytes], **kw: Any) -> list[bytes]:
        assert kw == {"justid": True} and min_idle == 0  # never counts a delivery
        self.claims.append((time.monotonic(), list(ids)))
        return ids


def test_a_slow_call_is_refreshed_until_it_looks_hung_and_a_quick_one_never() -> None:
    client = Client()
    keeper = LeaseKeeper(client, "s", "g", "c", claim_idle_ms=30)  # refresh every 10 ms, hung after 300 ms
    keeper.start()
    try:
        with keeper.hold([b"1-0"]):
            time.sleep(0.005)  # a quick call: nothing to refresh
        time.sleep(0.05)
        assert client.claims == []
        started = time.monotonic()
        with keeper.hold([b"2-0", b"3-0"]):
            time.sleep(0.6)  # twice HUNG_AFTER x claim_idle_ms
        assert client.claims and all(ids == [b"2-0", b"3-0"] for _, ids in client.claims)
        last = max(at for at, _ in client.claims) - started
        assert last < HUNG_AFTER * 0.03 + 0.05  # the claim lapses once the call looks hung
    finally:
        keeper.stop()
