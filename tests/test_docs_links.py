"""Every relative link in README.md and docs/**/*.md points at a file or folder that exists, and a
`path#anchor` link at a heading that exists in that markdown file.

Links are markdown `[text](path)` / `![alt](path)` and HTML `<img src="path">`. Links to other sites
(http:, https:, mailto:) are not followed. Code blocks and inline code are not read as links."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _strip_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """The link targets of a markdown text, outside code."""
    text = _strip_code(text)
    return [m.group(1) for m in LINK.finditer(text)] + [m.group(1) for m in IMG.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The broken relative links of one markdown file under `root`, each with the reason."""
    bad = []
    for target in links(path.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        try:
            dest.relative_to(root)
        except ValueError:
            bad.append(f"{target}: outside the repository")
            continue
        if anchor and dest.is_file() and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return bad


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    bad = broken_links(path)
    assert not bad, f"{path.relative_to(ROOT)} has broken links:\n  " + "\n  ".join(bad)


def test_the_readme_links_to_every_docs_page():
    """Every page under docs/ (not the raw measurement and report files) is reachable from the README."""
    readme = links((ROOT / "README.md").read_text(encoding="utf-8"))
    index = ROOT / "docs" / "README.md"
    listed = {(ROOT / t.partition("#")[0]).resolve() for t in readme if not EXTERNAL.match(t)}
    listed |= {(index.parent / t.partition("#")[0]).resolve()
               for t in links(index.read_text(encoding="utf-8")) if not EXTERNAL.match(t)}
    results = ROOT / "docs" / "results" / "README.md"
    listed |= {(results.parent / t.partition("#")[0]).resolve()
               for t in links(results.read_text(encoding="utf-8")) if not EXTERNAL.match(t)}
    pages = [p for p in (ROOT / "docs").rglob("*.md")
             if p.relative_to(ROOT / "docs").parts[0] not in ("measurements", "reports")]
    assert index in listed
    assert [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in listed] == []


def test_the_checker_finds_a_broken_link(tmp_path):
    """The check can fail: a missing file, a missing anchor, a missing image."""
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading) [gone](missing.md) [no anchor](there.md#nope)\n"
                    '<img src="missing.jpg"> ![x](gone.png) `[code](not-a-link.md)`\n'
                    "```\n[fenced](not-a-link-either.md)\n```\n")
    bad = broken_links(page, root=tmp_path)
    assert [b.split(":")[0] for b in bad] == ["missing.md", "there.md#nope", "gone.png", "missing.jpg"]
