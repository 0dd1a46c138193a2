"""The progress a person watches (issue 18): a line from the start that moves while rows flow,
one rate in the progress line, the summary, the journal and `enrich status`."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

from enrich.progress import BAR_MIN_COLUMNS, Counts, Flow, Reporter
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
    journal = json.loads(next((tmp_path / "ck").rglob("runs/*.json")).read_text())
    assert f"{journal['rows_per_s']:,.1f}" == summary.group(1)


def _mid_run(total: int = 1000) -> Reporter:
    """A reporter 14 s into a run whose rows began to come back at 10 s: 256 of them by now."""
    reporter = Reporter(total=total, stream=io.StringIO())
    reporter.t0 = 1000.0
    counts = Counts()
    counts.add("captioned", 6)
    reporter._flowing = (1010.0, 6)  # noqa: SLF001 - the moment the first rows came back
    counts.add("captioned", 230)
    counts.add("rejected", 20)
    reporter.update(counts)
    reporter.flow.read, reporter.flow.committed = 1000, 128
    return reporter


def test_the_live_line_fits_80_columns_and_keeps_rows_rate_and_eta() -> None:
    line = _mid_run().line(80, now=1014.0)
    assert len(line) < 80, line
    assert line.startswith("256/1,000 rows (captioning), 18.3 rows/s, ETA ")
    assert "elapsed" in line and "\u2588" not in line  # no bar below BAR_MIN_COLUMNS
    # a narrower terminal drops parts from the end, never the rows, rate and ETA
    narrow = _mid_run().line(60, now=1014.0)
    assert len(narrow) < 60 and narrow.startswith("256/1,000 rows (captioning), 18.3 rows/s, ETA")


def test_a_wide_terminal_gets_the_bar_and_every_part() -> None:
    line = _mid_run().line(160, now=1014.0)
    assert len(line) < 160
    bar, _, text = line.partition(" ")
    assert bar == "\u2588" * 5 + "\u2591" * 15  # 256 of 1,000 rows: a quarter of 20
    assert text.endswith("read 1,000, committed 128, captioned=236, rejected=20")
    assert "\u2588" not in _mid_run().line(BAR_MIN_COLUMNS - 1, now=1014.0)


def test_the_eta_counts_from_the_captioning_rate_not_the_start_up() -> None:
    # 250 rows in the 4 s since the first came back: 62.5 rows/s, 744 left -> 11.9 s; the rate
    # since the start (18.3 rows/s) would say 41 s
    assert _mid_run().eta(now=1014.0) == "ETA 0:11"
    early = _mid_run()
    assert early.eta(now=1011.0) == "ETA ?"  # rows have come back for 1 s only: not yet known
