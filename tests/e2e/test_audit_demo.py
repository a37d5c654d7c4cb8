"""`infersight demo` as a new user and a CI job see it: what it prints must be true and must match the
store, whatever happened before (a killed earlier run) and however it is stopped (signals, deadline).

Every test runs the real CLI in a subprocess on 127.0.0.1, with output piped (no TTY), as CI does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from infersight.bus.memory import MemoryBus
from infersight.model import RequestRecord

PREVIOUS_RUN = 25  # records a killed earlier run left undelivered in the journal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_argv(data: Path, *args: str, prelude: str = "") -> list[str]:
    """``python -c`` running the CLI's ``demo``, after ``prelude`` (a test's patch of the process)."""
    argv = ["demo", "--data-dir", str(data), "--port", str(free_port()), *args]
    return [sys.executable, "-c", f"{prelude}\nimport sys\nfrom infersight.cli import main\n"
            f"sys.exit(main({argv!r}))"]


def table_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[(cells[0], cells[1])] = cells
    return rows


def closing(stdout: str) -> re.Match[str]:
    said = re.search(r"sent (\d+) requests \((\d+) answered with an error, by design(?:; (\d+) cut off)?",
                     stdout)
    assert said is not None, stdout[-800:]
    return said


def stored(data: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data / "infersight.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def leave_undelivered_records(data: Path, n: int) -> None:
    """What a demo killed mid-run (SIGKILL, terminal closed) leaves: records journaled, not yet stored."""
    bus = MemoryBus([], journal_dir=str(data / "spool"))
    an_hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    for i in range(n):
        bus.publish(RequestRecord(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", tenant_id="acme",
                                  model_id="sim-large", backend="sim", started_at=an_hour_ago,
                                  status_code=500, error_type="upstream_500", prompt_tokens=10))
    assert bus.journal is not None
    bus.journal.close()


@pytest.fixture(scope="module")
def rerun(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A second demo on the data dir of a killed first one; the dir's name holds brackets (rich markup)."""
    data = tmp_path_factory.mktemp("audit") / "run[b]x"
    leave_undelivered_records(data, PREVIOUS_RUN)
    result = subprocess.run(demo_argv(data, "--duration", "3", "--rps", "20"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return data, result


def test_table_after_a_killed_run_counts_only_this_runs_requests(rerun) -> None:
    data, result = rerun
    rows = table_rows(result.stdout)
    said = closing(result.stdout)
    assert sum(int(r[2]) for r in rows.values()) == int(said.group(1))
    assert sum(int(r[3]) for r in rows.values()) == int(said.group(2)) + int(said.group(3) or 0)
    # the earlier run's records are not lost: the journal replayed them into the store
    assert stored(data, "SELECT count(*) FROM requests")[0][0] == int(said.group(1)) + PREVIOUS_RUN


def test_printed_paths_are_the_real_data_dir(rerun) -> None:
    data, result = rerun
    assert f"every request is stored in {data}/infersight.duckdb" in result.stdout
    assert f"store {data}/infersight.duckdb" in result.stdout


def test_piped_output_is_plain_lines_with_whole_commands(rerun) -> None:
    _, result = rerun
    assert "\x1b" not in result.stdout and "\r" not in result.stdout  # no cursor moves, no colours
    # a printed command is on one line, so it can be copied from a CI log or a narrow terminal
    start = next(line for line in result.stdout.splitlines() if line.startswith("gateway http"))
    assert start.rstrip().endswith("infersight.duckdb")


def test_empty_quality_cells_are_explained(rerun) -> None:
    _, result = rerun
    rows = table_rows(result.stdout)
    initech = [cells for (tenant, _), cells in rows.items() if tenant == "initech"]
    assert initech, result.stdout[-2000:]
    # initech's content policy is "none": its answers never leave the gateway, so nothing is judged
    assert all(cells[9:12] == ["off", "off", "off"] for cells in initech)
    caption = " ".join(result.stdout.split())
    assert "off: the tenant's content policy is none" in caption
    assert "-: none evaluated yet" in caption


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{pid}$", status, re.M):
                found.add(int(entry))
    return found


def test_repeated_ctrl_c_and_sigterm_still_end_cleanly(tmp_path) -> None:
    """An impatient user presses Ctrl-C again while the demo drains and flushes; CI sends SIGTERM."""
    data = tmp_path / "data"
    proc = subprocess.Popen(demo_argv(data, "--rps", "30"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out: list[str] = []
    errs: list[str] = []
    readers = [threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True),  # type: ignore[arg-type]
               threading.Thread(target=lambda: errs.extend(proc.stderr), daemon=True)]  # type: ignore[arg-type]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30
    while not any("stats while it runs" in line for line in out) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # traffic flows
    children = _children(proc.pid)
    assert children, "the eval process should be running"
    signals = [signal.SIGINT, signal.SIGTERM]
    i = 0
    # until the closing line: what comes after it is the interpreter's exit, with the old handlers back
    while proc.poll() is None and time.monotonic() < deadline + 30 and not any("every request is" in x for x in out):
        proc.send_signal(signals[i % 2])
        i += 1
        time.sleep(0.3)
    proc.wait(timeout=30)
    for reader in readers:
        reader.join(5)
    stdout, err = "".join(out), "".join(errs)
    assert proc.returncode == 0, err[-2000:]
    assert i >= 5  # the signals kept coming while it shut down
    assert "KeyboardInterrupt" not in err
    assert "infersight demo: final" in stdout
    said = closing(stdout)
    assert "stopping:" in stdout  # says what it waits for instead of going blank
    # everything the closing line counts was flushed to the store before exit
    assert stored(data, "SELECT count(*) FROM requests")[0][0] == int(said.group(1)) > 0
    time.sleep(1.0)
    assert not {pid for pid in children if Path(f"/proc/{pid}").exists()}, "left running"


SLOW_SIM = """
import dataclasses
import infersight.demo.runner as runner
import infersight.demo.traffic as traffic
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.server import SimServer
slow = {n: p if p.judge else dataclasses.replace(p, ttft_base_ms=20000.0) for n, p in DEFAULT_PROFILES.items()}
runner.SimServer = lambda seed: SimServer(seed=seed, profiles=slow)
traffic.DRAIN_S = 1.0
"""


def test_closing_line_counts_requests_cut_off_by_the_stop(tmp_path) -> None:
    """Answers that outlast the drain are hung up on: the table shows them as errors, so must the line."""
    data = tmp_path / "data"
    result = subprocess.run(demo_argv(data, "--duration", "1", "--rps", "10", prelude=SLOW_SIM),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    said = closing(result.stdout)
    sent, by_design, cut = int(said.group(1)), int(said.group(2)), int(said.group(3) or 0)
    table_errors = sum(int(r[3]) for r in table_rows(result.stdout).values())
    stored_errors = stored(data, "SELECT count(*) FROM requests WHERE status_code >= 400 OR error_type IS NOT NULL")
    assert by_design + cut == table_errors == stored_errors[0][0]
    assert sent > 0 and cut > 0
    assert "recorded as client disconnects" in result.stdout


def test_port_in_use_is_an_error_on_stderr(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "infersight.cli", "demo", "--duration", "1", "--data-dir", str(tmp_path / "d"),
             "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert result.stdout == ""


def test_piped_output_reports_progress_while_it_runs(tmp_path: Path) -> None:
    """Was: nothing between the start lines and the final table when piped (a CI log): the live table
    draws only on a terminal. Now a progress line comes every ``PROGRESS_S`` (shortened here)."""
    prelude = "import infersight.demo.runner as runner\nrunner.PROGRESS_S = 1.0"
    result = subprocess.run(demo_argv(tmp_path / "d", "--duration", "3.5", "--rps", "20", prelude=prelude),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    progress = [line for line in result.stdout.splitlines() if re.match(r"^\d+ s: sent \d+ requests", line)]
    assert len(progress) >= 2, result.stdout[-2000:]
    sent = [int(re.match(r"^\d+ s: sent (\d+)", line).group(1)) for line in progress]  # type: ignore[union-attr]
    assert sent == sorted(sent) and sent[-1] > 0
    assert result.stdout.index(progress[0]) < result.stdout.index("infersight demo: final")
