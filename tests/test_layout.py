"""The house keeps its promises to code written against 0.1: moved modules and renamed sizes still answer, with a
warning that names the new place."""

import importlib
import subprocess
import sys
import warnings

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(
    "old, new",
    [
        ("dnalm.finetune", "dnalm.eval.finetune"),
        ("dnalm.errors", "dnalm.utils.errors"),
        ("dnalm.embedding", "dnalm.use.embedding"),
        ("dnalm.bench.mfu", "dnalm.train.flops"),
        ("dnalm.bench.compare", "dnalm.studies.compare"),
    ],
)
def test_a_moved_module_answers_to_its_old_name_with_a_deprecation(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_renamed_cnns_answer_to_their_old_names():
    from dnalm.eval.finetune import arch_name
    from dnalm.models import get_config

    with pytest.warns(FutureWarning, match="'cnn' is now called 'cnn-base'"):
        assert get_config("cnn") == get_config("cnn-base")
    with pytest.warns(FutureWarning, match="--arch cnn is now called cnn-small"):
        assert arch_name("cnn") == "cnn-small"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arch_name("cnn-small") == "cnn-small"


def test_no_file_imports_another_that_imports_it_back():
    """Module-level and function-level imports alike, over dnalm/ and data_prep/ (scripts/import_cycles.py)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_cycles.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0 and ", import cycles: 0" in done.stdout, done.stdout + done.stderr


def test_reading_genomes_and_tokenizing_never_loads_torch():
    """What prep's jobs and the BPE trainer run on: a process that reads a genome and tokenizes it has no torch."""
    code = (
        "import sys, dnalm.genome as g, dnalm.tokenizers as t; "
        "bases = g.read(g.DEFAULT_GENOME).contigs[0].sequence[:10000]; "
        "[t.load(s).encode(bases) for s in ('nucleotide', 'kmer:6')]; "
        "from dnalm.tokenizers import bpe; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_the_files_dealt_out_together_are_those_that_share_the_trained_fixture():
    """tests/scheduling.py sends the files whose tests or fixtures ask for `trained` (or `bundles`, made from it) to
    one xdist worker, so that it trains once: its list is the files that do."""
    import ast

    from tests.scheduling import TRAINED_FILES

    def asks_for_it(path) -> bool:
        functions = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]
        return any(a.arg in ("trained", "bundles") for f in functions for a in f.args.args)

    assert {p.name for p in (REPO / "tests").glob("test_*.py") if asks_for_it(p)} == TRAINED_FILES
