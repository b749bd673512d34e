"""The README links only to files of this repository, and each of them exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_links_only_to_files_in_the_repository():
    text = (ROOT / "README.md").read_text()
    targets = LINK.findall(text)
    assert targets, "the README links to its docs"
    assert not re.search(r"https?://", text), "the README links outside the repository"
    for target in targets:
        path = (ROOT / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), target
        assert path.exists(), f"README links to {target}, which does not exist"
