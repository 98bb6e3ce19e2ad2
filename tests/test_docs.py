"""The docs stay true to the code: the generated references are current."""

import subprocess
import sys

from tests.conftest import REPO


def test_the_generated_references_are_current():
    """docs/config.md (every config field) and docs/cli.md (every command's --help) as scripts/reference.py writes
    them: a field, default, description or flag changed without rerunning it fails here."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_every_figure_the_readme_quotes_is_in_the_benchmark_index():
    """The README's results come from docs/benchmarks/README.md only: each number in its "Results at a glance" table
    stands in the index too."""
    import re

    readme = (REPO / "README.md").read_text()
    glance = readme.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    index = (REPO / "docs" / "benchmarks" / "README.md").read_text()
    figures = [
        cell.strip()
        for row in glance.splitlines()
        if row.startswith("| ") and "---" not in row
        for cell in row.strip("|").split("|")[1:2]
    ][1:]  # the figure column, past the header
    assert len(figures) >= 6
    for figure in figures:
        assert figure in index, f"README quotes {figure!r}, which docs/benchmarks/README.md does not hold"
    for number in re.findall(r"\d[\d,.]*", glance.split("| page |", 1)[1]):
        assert number in index or number in ("2", "4", "8"), number


def test_the_readme_is_a_way_in():
    """At most 250 lines, the two commands a newcomer runs first, and a page for every task it points to."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first = readme.split("## ", 1)[0]
    assert (
        'pip install torch==2.13.0 && pip install -e ".[dev]" && dnalm demo' in first and "python -m pytest -q" in first
    )
    import re

    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (REPO / link).exists(), link
