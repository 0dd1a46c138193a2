"""The README documents the table the code writes, and every run flag."""

from __future__ import annotations

import re
from pathlib import Path

from enrich.schemas import CAPTIONS

from enrich.cli import build_run_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_every_column() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", README, re.M))
    names = {n for pair in documented for n in pair if n}
    assert set(CAPTIONS.names) <= names, set(CAPTIONS.names) - names


def test_readme_lists_every_flag() -> None:
    flags = {o for a in build_run_parser()._actions for o in a.option_strings if o.startswith("--")}
    missing = {f for f in flags - {"--help"} if f"`{f}" not in README}
    assert not missing, missing
