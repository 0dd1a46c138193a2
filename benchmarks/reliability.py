"""Run every fault drill (the slow ones included) and write their figures into RELIABILITY.md.

    python benchmarks/reliability.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    log = Path(tempfile.mkdtemp()) / "drills.jsonl"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "slow or not slow",
                           "tests/test_reliability.py", "-p", "no:cacheprovider"],
                          cwd=ROOT, env={**os.environ, "ENRICH_DRILL_LOG": str(log)},
                          capture_output=True, text=True)
    minutes = (time.monotonic() - t0) / 60
    print(proc.stdout[-3000:])
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "no output"
    lines = [
        "# Reliability",
        "",
        "Every figure below comes from `python benchmarks/reliability.py`, which runs",
        "`tests/test_reliability.py` with the slow drills included and writes this file. Each drill",
        "injects a real fault into a real run (local Ray, real tar shards, a real Delta table),",
        "reruns where the run stopped, and compares the table with an uninterrupted run's: the same",
        "`source_index` set and, per row, the same status, image hash and caption.",
        "",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {minutes:.1f} min, "
        f"pytest: `{summary}`.",
        "",
        "## Faults",
        "",
        "| fault | injected | survived | rows expected | lost | duplicated | differing | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["drill"] in ("hostile inputs", "bad invocation") or r["drill"].startswith("secrets"):
            continue
        notes = {k: v for k, v in r.items() if k not in (
            "drill", "injected", "survived", "rows_expected", "rows_lost", "rows_duplicated",
            "rows_different")}
        lines.append(f"| {r['drill']} | {r.get('injected')} | {'yes' if r.get('survived') else 'NO'} "
                     f"| {r.get('rows_expected')} | {r.get('rows_lost')} | {r.get('rows_duplicated')} "
                     f"| {r.get('rows_different')} | {json.dumps(notes) if notes else ''} |")
    hostile = next((r for r in records if r["drill"] == "hostile inputs"), None)
    if hostile:
        lines += ["", f"## Hostile inputs ({hostile['kinds']} kinds, one run, {hostile['seconds']} s)",
                  "", "| input | outcome | reason | as expected |", "|---|---|---|---|"]
        for o in hostile["outcomes"]:
            reason = o["reason"].replace("|", "\\|")[:120]
            lines.append(f"| {o['input']} | {o['status']} | {reason} | "
                         f"{'yes' if o['as_expected'] else 'NO'} |")
    bad = [r for r in records if r["drill"] == "bad invocation"]
    if bad:
        lines += ["", "## Bad invocations", "", "| invocation | exit code | message | wrote nothing |",
                  "|---|---|---|---|"]
        for r in bad:
            lines.append(f"| {r['input']} | {r['exit_code']} | `{r['message'][:140]}` | "
                         f"{'yes' if r['wrote_nothing'] else 'NO'} |")
    secrets = next((r for r in records if r["drill"].startswith("secrets")), None)
    if secrets:
        lines += ["", "## Secrets", "",
                  f"`HF_TOKEN`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` set "
                  f"to canary values for a full run, `--plan` and `status`: searched "
                  f"{secrets['outputs_checked']} command outputs (stdout + stderr) and "
                  f"{secrets['files_checked']} files (table data, Delta log with commit metadata, "
                  f"journals): leaks found: {secrets['leaks'] or 'none'}."]
    (ROOT / "RELIABILITY.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {ROOT / 'RELIABILITY.md'} from {len(records)} drill records")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
