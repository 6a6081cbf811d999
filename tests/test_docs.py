"""The README stays short, its links and pictures resolve, and the configs restate no measured time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_reads_in_five_minutes():
    assert (ROOT / "README.md").stat().st_size <= 10_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_exists(page):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    local = [t for t in targets if "://" not in t]
    assert local or page.name != "README.md"
    for target in local:
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_points_at_every_page():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"]({page.relative_to(ROOT)})" in readme, page


def test_no_config_states_a_training_time():
    for config in (ROOT / "configs").glob("*.yaml"):
        comments = "\n".join(line for line in config.read_text().splitlines() if line.lstrip().startswith("#"))
        assert not re.search(r"\d\s*(min|minutes|hours?|h|s)\b", comments), config.name
