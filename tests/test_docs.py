"""The README and the user guide under docs/: every relative link and image resolves, anchors included."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "infra").rglob("*.md"))]


def prose(text: str, inline_code: bool = False) -> str:
    """The Markdown outside fenced code blocks, and outside inline code spans unless ``inline_code``."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return text if inline_code else re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen = set(), {}
    for line in prose(path.read_text(), inline_code=True).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*)$", line):
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = unquote(target).partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.relative_to(ROOT)}: {target} (no heading #{anchor} in {dest.name})")
    return bad


def test_every_relative_link_in_the_docs_resolves():
    bad = [b for p in pages() for b in broken_links(p)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_checker_finds_a_broken_link_and_anchor(tmp_path: Path):
    (tmp_path / "a.md").write_text("# Title\n\n## A `code` heading\n")
    doc = tmp_path / "b.md"
    doc.write_text(
        "[ok](a.md#a-code-heading) [bad](missing.md) [anchor](a.md#nope) ![img](x.png)\n"
        "```\n[in code](ignored.md)\n```\n`[inline](ignored.md)` [web](https://example.org)\n"
    )
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        bad = broken_links(doc)
    finally:
        ROOT = old
    assert bad == ["b.md: missing.md (no such file)", "b.md: a.md#nope (no heading #nope in a.md)",
                   "b.md: x.png (no such file)"]  # fmt: skip


def test_the_readme_is_a_front_page():
    """The README stays a short page (the two commands, the evidence, the map, the links); the guide is docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(prose(text))}
    guide = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert guide <= linked, f"docs pages not linked from the README: {sorted(guide - linked)}"
