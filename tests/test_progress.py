"""The progress a person watches (issue 18): a line from the start that moves while rows flow,
one rate in the progress line, the summary, the journal and `enrich status`."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

from enrich.progress import Counts, Flow, Reporter, rate
from tests.conftest import cli


def test_off_a_terminal_a_plain_line_every_so_often_until_closed() -> None:
    out = io.StringIO()
    reporter = Reporter(total=1000, stream=out, every_s=0.05)
    assert not reporter.tty
    counts, flow = Counts(), Flow()
    reporter.running(flow)
    reporter.update(counts, phase="starting Ray")
    seen = threading.Event()

    def wait_for(text: str) -> None:
        for _ in range(200):
            if text in out.getvalue():
                return
            seen.wait(0.05)
        raise AssertionError(f"{text!r} never shown: {out.getvalue()!r}")

    wait_for("0/1,000 rows (starting Ray)")  # a line before any row arrives
    counts.add("captioned", 300)
    counts.add("rejected", 20)
    flow.read, flow.committed = 512, 256
    reporter.update(counts)
    wait_for("320/1,000 rows (captioning)")
    line = out.getvalue().strip().splitlines()[-1]
    assert "read 512, committed 256" in line and "captioned=300" in line and "rejected=20" in line
    # the source ended after 400 rows: the ETA counts against what will really be done
    flow.read, flow.exhausted = 400, True
    wait_for("320/400 rows")
    reporter.close()
    n = len(out.getvalue())
    seen.wait(0.2)
    assert len(out.getvalue()) == n  # closed: nothing more is written


def test_summary_journal_and_status_say_one_rate(tmp_path: Path, ray_address: str) -> None:
    res = cli("--until", "64", "--source", "sample", "--table", str(tmp_path / "t"), "--engine",
              "dry-run", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet", "--ray-address",
              ray_address)
    assert res.returncode == 0, res.stderr
    summary = re.search(r"rows in [\d.]+s \(([\d.,]+) rows/s", res.stderr)
    assert summary, res.stderr
    status = cli("status", "--table", str(tmp_path / "t"), "--checkpoint-dir", str(tmp_path / "ck"))
    assert status.returncode == 0, status.stderr
    run_line = next(line for line in status.stdout.splitlines() if "completed" in line)
    assert f" {summary.group(1)} " in f" {run_line} ", (summary.group(1), run_line)
    assert rate(64, 2.0) == 32.0 and rate(5, 0) == 0.0
