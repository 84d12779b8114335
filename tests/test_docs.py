"""The documentation: README.md, docs/*.md and experiments/results/**/README.md.

Every relative link (`[text](target)` and `![alt](target)`) must name a file or folder of
the repository, and a `#anchor` must match a heading of the target file by GitHub's slug rule.
README.md stays short and points nowhere outside the repository.
"""
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.*?)\1")


def doc_files():
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "experiments" / "results").glob("**/README.md"))
    return files


def prose_lines(text):
    """The lines outside fenced code blocks, with their line numbers."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def slug(heading):
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces -> '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor of a markdown file (repeated headings get -1, -2, ... as on GitHub)."""
    seen = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path):
    """(line number, target) of every link in the prose of a markdown file."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        for match in LINK.finditer(line):
            yield number, match.group(1)


def broken_links(path):
    """The relative links of a file that name no file or folder, or no heading of it."""
    problems = []
    for number, target in links(path):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http:, https:, mailto: ... are not checked here
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where} (no such file or folder)")
            continue
        try:
            resolved.relative_to(ROOT)
        except ValueError:
            problems.append(f"{where} (outside the repository)")
            continue
        if anchor:
            if resolved.is_dir() or resolved.suffix != ".md":
                problems.append(f"{where} (an anchor into a file that is not markdown)")
            elif anchor not in anchors(resolved):
                problems.append(f"{where} (no heading with the anchor #{anchor})")
    return problems


def test_slug_follows_github():
    assert slug("Evaluation (`dit-jax eval`)") == "evaluation-dit-jax-eval"
    assert slug("Scaling out: sharding and multi-host") == "scaling-out-sharding-and-multi-host"
    assert slug("MM-DiT: text through joint attention") == "mm-dit-text-through-joint-attention"
    assert slug("Study 1: conditioning designs (DiT paper, Figure 5)") == (
        "study-1-conditioning-designs-dit-paper-figure-5")
    assert slug("snake_case stays") == "snake_case-stays"


def test_the_checker_finds_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Sub part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n"
        "[ok](a.md) [ok](a.md#sub-part) [ok](#page) ![ok](a.md) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](a.md#nope) ![gone image](img.png) [self](#nowhere)\n"
        "```\n[in code](not_checked.md)\n```\n"
        "`[inline code](not_checked.md)`\n",
        encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 4, problems
    assert any("missing.md" in p for p in problems)
    assert any("#nope" in p for p in problems)
    assert any("img.png" in p for p in problems)
    assert any("#nowhere" in p for p in problems)


def test_documentation_files_exist():
    names = {p.relative_to(ROOT).as_posix() for p in doc_files()}
    for required in ["README.md", "docs/architecture.md", "docs/training.md",
                     "docs/scaling.md", "docs/evaluation.md", "docs/checkpoints.md"]:
        assert required in names, f"{required} is missing"
    assert any(n.startswith("experiments/results/") for n in names), "no study README"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.md")),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_pages_start_with_a_summary_that_links_back_to_readme(path):
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines and lines[0].startswith("# "), f"{path.name} does not start with a title"
    first_paragraph = text.split("\n\n")[1] if "\n\n" in text else ""
    assert "](../README.md" in first_paragraph, (
        f"{path.name}: the paragraph after the title should summarise the page and link back "
        "to ../README.md")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_fences_are_closed(path):
    fences = [line for line in path.read_text(encoding="utf-8").splitlines() if FENCE.match(line)]
    assert len(fences) % 2 == 0, f"{path}: an unclosed code fence hides the text after it"


def test_readme_is_short_and_self_contained():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300)"
    assert "../shared" not in text
    assert "DESIGN.md" not in text


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_pointer_outside_the_repository_or_per_commit_timings(path):
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text and "DESIGN.md" not in text, path
    assert "fresh-clone" not in text, f"{path}: per-commit CI timings belong nowhere"
