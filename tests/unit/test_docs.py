"""The documentation stays inside the repository: every relative link of the README and of
``docs/`` resolves to a file of the checkout (a user's clone has nothing beside it), none climbs out
of it, and the README stays a front page. No servers."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 150
# Pages other work adds; listed in docs/index.md before they land (the integrator merges them).
PENDING = {"configuration-safety.md", "costs-and-channels.md", "versions.md", "verification.md", "fleet.md",
           "benchmarks-fleet.md", "benchmarks-versions.md"}
# [text](target) and ![alt](target), the target up to a space (a title) or the closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def links(page: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))  # code shows commands, not links
    return LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_the_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "architecture.md", "benchmarks.md", "runbook-account.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(page):
    for target in links(page):
        url = urlparse(target)
        if url.scheme in ("http", "https", "mailto"):
            continue
        assert not url.scheme and not url.netloc, f"{page.name}: {target} is not a relative link"
        path = unquote(url.path)
        assert not path.startswith("/"), f"{page.name}: {target} is absolute; link relative to the page"
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(REPO), f"{page.name}: {target} points outside the repository"
        if resolved.name in PENDING and resolved.parent == REPO / "docs" and not resolved.exists():
            continue
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if url.fragment and resolved.suffix == ".md":
            assert url.fragment in anchors(resolved), f"{page.name}: {target}: no heading #{url.fragment}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_link_leaves_the_repository(page):
    # Also in code spans and blocks: a path to the runbook's seed copy is broken in a user's clone.
    text = page.read_text()
    assert "shared/seed" not in text and "../../" not in text.replace("](../", ""), page.name


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the detail into docs/"


def test_every_docs_page_is_listed_in_the_index():
    index = (REPO / "docs" / "index.md").read_text()
    listed = {Path(t).name for t in LINK.findall(index)}
    for page in PAGES[1:]:
        if page.name != "index.md":
            assert page.name in listed, f"docs/index.md does not list {page.name}"
    assert PENDING <= listed


def test_the_link_checker_catches_a_link_outside(tmp_path, monkeypatch):
    # The checker itself: a link that climbs out of the repository and one to nothing both fail.
    page = REPO / "docs" / "index.md"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "[x](../../shared/seed/r.md) [y](nothing.md)")
    with pytest.raises(AssertionError, match="outside the repository"):
        test_every_relative_link_resolves_inside_the_repository(page)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "[y](nothing.md)")
    with pytest.raises(AssertionError, match="does not exist"):
        test_every_relative_link_resolves_inside_the_repository(page)


def test_the_readmes_smallest_clusters_yaml_is_valid():
    import yaml

    from pg_backups.config import DAG_KINDS, parse_config

    block = re.search(r"## The smallest `clusters.yaml`\s+```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md: no clusters.yaml example"
    (cluster,) = parse_config(yaml.safe_load(block.group(1)), "README.md").clusters
    # The README's DAG table lists what that cluster gets.
    readme = (REPO / "README.md").read_text()
    for kind in DAG_KINDS:
        assert f"`{DAG_KINDS[kind].replace('{cluster}', '<cluster>')}`" in readme, kind
    assert cluster.name == "asso" and cluster.dag_kinds == list(DAG_KINDS)
