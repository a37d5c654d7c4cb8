"""The sampling key: made once per host (or per Redis), private, shared by every process, and what the
random draw is keyed with, so that a client choosing its trace ids cannot choose its sample."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infersight.evaluation.sampler import Sampler, trace_fraction
from infersight.evaluation.sampling_key import KEY_BYTES, FileSamplingKey


def test_the_key_is_made_once_private_and_the_same_for_every_process(tmp_path: Path) -> None:
    path = tmp_path / "data" / "sampling.key"
    with ThreadPoolExecutor(8) as pool:  # processes of one host starting at once
        keys = set(pool.map(lambda _: FileSamplingKey(path).get(), range(8)))
    assert len(keys) == 1 and len(next(iter(keys))) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert FileSamplingKey(path).get() in keys
    assert not [p for p in path.parent.iterdir() if p.name != "sampling.key"]  # no temporary left


def test_a_damaged_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "sampling.key"
    path.write_text("not hex")
    with pytest.raises(ValueError):
        FileSamplingKey(path).get()


def test_the_draw_is_keyed_so_unkeyed_picks_do_not_decide(tmp_path: Path) -> None:
    store = FileSamplingKey(tmp_path / "sampling.key")
    sampler = Sampler(0.05, key_store=store)
    key = store.get()
    picked = [t for t in (f"{i:032x}" for i in range(20_000)) if trace_fraction(t) < 0.05][:400]
    decided = [sampler.initial("acme", t) for t in picked]
    assert decided == ["random" if trace_fraction(t, key) < 0.05 else None for t in picked]
    assert sum(d is not None for d in decided) < 45  # ~5% of 400 (20), not all of them


def test_an_unreadable_key_keeps_the_last_one(tmp_path: Path) -> None:
    path = tmp_path / "sampling.key"
    sampler = Sampler(0.5, key_store=FileSamplingKey(path), poll_s=60)
    key = FileSamplingKey(path).get()
    path.write_text("cut sho")  # damaged under a running gateway
    sampler.refresh()
    assert [sampler.initial("acme", f"{i:032x}") is not None for i in range(50)] == \
        [trace_fraction(f"{i:032x}", key) < 0.5 for i in range(50)]
