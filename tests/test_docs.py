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
