"""The maths notes and the code point at each other: every citation in the source resolves to a section of
docs/maths.md, and every test docs/maths.md names as a check exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATHS = ROOT / "docs" / "maths.md"
LABEL = r"(?:[A-J](?:\.\d+)?|\d\.\d+)"
#: ``maths.md §A.2``, ``maths.md §A.2–A.3``, ``maths.md §D.1, §1.4``, ``maths.md §G.4 / §G.5``: a citation and the
#: labels chained to it.
CITATION = re.compile(rf"maths\.md (§{LABEL}(?:\s*(?:[–-]|,|/|and)\s*§?{LABEL})*)")
#: A bare letter label (``§C.4``) anywhere: numbered sections of other papers (``§4.3``) are not ours.
BARE = re.compile(r"(?<![\w.])§([A-J](?:\.\d+)?)\b")


def _sections() -> set[str]:
    labels = set()
    for line in MATHS.read_text().splitlines():
        found = re.match(rf"^#+ ({LABEL})[. ]", line)
        if found:
            labels.add(found.group(1))
    return labels


def _citations(text: str) -> list[str]:
    labels = []
    for chain in CITATION.finditer(text):
        labels += re.findall(LABEL, chain.group(1))
    labels += BARE.findall(text)
    return labels


def _cited() -> dict[str, list[str]]:
    """label -> the files that cite it, over the package, the tests, the benchmarks and the README."""
    files = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "tests").glob("*.py")),
             *sorted((ROOT / "benchmarks").glob("*.py")), ROOT / "README.md", ROOT / "docs" / "architecture.md"]
    cited: dict[str, list[str]] = {}
    for path in files:
        for label in _citations(path.read_text()):
            cited.setdefault(label, []).append(str(path.relative_to(ROOT)))
    return cited


def test_every_citation_resolves_to_a_section_of_the_maths_notes() -> None:
    sections, cited = _sections(), _cited()
    assert len(cited) > 20  # the source does cite the notes: a parser that finds nothing would pass vacuously
    missing = {label: sorted(set(files)) for label, files in cited.items() if label not in sections}
    assert not missing, f"citations of sections docs/maths.md does not have: {missing}"


def test_the_citation_parser_reads_chains_and_refuses_unknown_labels() -> None:
    text = "see maths.md §A.2–A.3 and maths.md §D.1, §1.4; also §G.4 / §G.5 but not Song et al. §4.3 (maths.md §Z.9)"
    # chains after "maths.md", then the bare letter labels; another paper's "§4.3" and an unknown letter are skipped
    assert _citations(text) == ["A.2", "A.3", "D.1", "1.4", "A.2", "D.1", "G.4", "G.5"]
    assert "Z.9" not in _sections() and {"A.2", "G.5", "1.4"} <= _sections()


def test_every_check_the_maths_notes_name_is_a_test_that_exists() -> None:
    text = MATHS.read_text()
    defined = {m.group(1) for path in (ROOT / "tests").glob("test_*.py")
               for m in re.finditer(r"^def (test_\w+)", path.read_text(), re.M)}
    named = set(re.findall(r"::(test_\w+)", text)) | set(re.findall(r"`(test_\w+)`", text))
    assert len(named) > 20
    assert not named - defined, f"docs/maths.md names tests that do not exist: {sorted(named - defined)}"
