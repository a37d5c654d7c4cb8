"""SIGKILL the serving process mid-load, twice, and count: every published record lands exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.integration.bus.conftest import DictSink, wait_until
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[3]
N = 4000


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.bus.sigkill_child", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def rows(db: Path) -> list[int]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT idx FROM records ORDER BY idx")]
        except sqlite3.OperationalError:
            return []  # killed before the table existed


def test_sigkill_mid_load_then_restart_delivers_every_record_exactly_once(tmp_path: Path) -> None:
    journal, db = tmp_path / "journal", tmp_path / "sink.sqlite"

    # 1. publish under load and SIGKILL half way; stdout says what publish had returned for
    publisher = child("publish", str(journal), str(db), str(N))
    assert publisher.stdout is not None
    last = -1
    while last < N // 2:
        line = publisher.stdout.readline()
        assert line, "the publisher exited early"
        last = int(line)
    publisher.send_signal(signal.SIGKILL)
    last = max([last, *(int(x) for x in publisher.stdout.read().split() if x.isdigit())])
    publisher.wait()
    published = last + 1
    delivered_before = len(rows(db))
    assert delivered_before < published, "the kill should land with records still in flight"

    # 2. restart, and SIGKILL again while the replay is still writing
    replaying = child("drain", str(journal), str(db))
    time.sleep(0.6)
    replaying.send_signal(signal.SIGKILL)
    replaying.wait()
    print(
        f"published {published}; in the sink after the first kill {delivered_before}, after the second {len(rows(db))}"
    )

    # 3. restart once more and let it finish
    final = child("drain", str(journal), str(db))
    out, _ = final.communicate(timeout=60)
    assert final.returncode == 0
    stats = orjson.loads(out.splitlines()[-1])

    got = rows(db)
    # everything that was published is there, once; at most the one record appended between the
    # publish returning and the index being written may also be there
    assert got[:published] == list(range(published)), f"missing: {sorted(set(range(published)) - set(got))[:10]}"
    assert len(got) in (published, published + 1) and len(set(got)) == len(got)
    assert stats["dropped"] == 0 and stats["dead_lettered"] == 0
    assert stats["replayed"] > 0 and stats["delivered"] == stats["replayed"]
    assert sorted(p.name for p in journal.rglob("journal-*.jsonl")) == []  # all delivered, all deleted


def test_sigkill_of_a_redis_gateway_then_restart_ships_every_record(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The same with RedisStreamBus: what the journal held when the gateway died reaches the stream."""
    journal = tmp_path / "journal"
    sink = DictSink()
    run_consumer(redis_server.url, sink)
    publisher = child("publish", str(journal), redis_server.url, "3000")
    assert publisher.stdout is not None
    last = -1
    while last < 1500:
        line = publisher.stdout.readline()
        assert line, "the publisher exited early"
        last = int(line)
    publisher.send_signal(signal.SIGKILL)
    last = max([last, *(int(x) for x in publisher.stdout.read().split() if x.isdigit())])
    publisher.wait()
    shipped_before = len(sink)
    final = child("drain", str(journal), redis_server.url)
    out, _ = final.communicate(timeout=60)
    assert final.returncode == 0
    stats = orjson.loads(out.splitlines()[-1])
    wait_until(lambda: len(sink) >= last + 1, what=f"{last + 1} records in the sink (have {len(sink)})")
    got = sorted(int(trace_id, 16) for trace_id, _ in sink.rows)
    assert got[: last + 1] == list(range(last + 1)) and len(got) <= last + 2
    assert shipped_before < last + 1 and stats["replayed"] > 0 and stats["dropped"] == 0
