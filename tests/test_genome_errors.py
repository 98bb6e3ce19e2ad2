"""Every kind of bad FASTA gets a clear one-line error naming the file (and record and line where it has them)."""

import gzip

import pytest

from dnalm import genome
from dnalm.utils.errors import GenomeError
from tests.conftest import refused_by_cli, run_cli

ECOLI_GZ = genome.DEFAULT_GENOME.read_bytes()

BAD_INPUTS = {
    # name: (file content, file name, pattern the message must hold)
    "empty file": (b"", "empty.fa", r"file is empty"),
    "empty gzip": (gzip.compress(b""), "empty.fa.gz", r"file is empty"),
    "blank lines only": (b"\n\n\n", "blank.fa", r"file is empty"),
    "no header": (b"ACGTACGT\nACGT\n", "nohead.fa", r"line 1: sequence before any '>' header"),
    "all records empty": (b">a\n>b\n\n", "allempty.fa", r"every record is empty"),
    "duplicate names": (
        b">a\nACGT\n>b\nAC\n>a x\nGG\n",
        "dup.fa",
        r"line 5: duplicate record name 'a' \(first at line 1\)",
    ),
    "digit": (b">a\nACGT\n>chr2\nACGT\nAC9T\n", "digit.fa", r"record 'chr2', line 5: '9' is not a DNA letter"),
    "gap dash": (b">a\nAC-GT\n", "dash.fa", r"record 'a', line 2: '-' is not a DNA letter"),
    "stop star": (b">a\nACGT*\n", "star.fa", r"'\*' is not a DNA letter"),
    "stray byte": (b">a\nAC\x00GT\n", "stray.fa", r"line 2: byte 0x00 is not a DNA letter"),
    "high byte": (b">a\nACGT\nAC\xe9GT\n", "high.fa", r"line 3: byte 0xe9 is not a DNA letter"),
    "protein": (
        b">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF\n",
        "prot.fa",
        r"looks like a protein FASTA",
    ),
    "empty name": (b">\nACGT\n", "noname.fa", r"line 1: FASTA header '>' with no record name"),
    "truncated gzip": (ECOLI_GZ[: len(ECOLI_GZ) // 2], "truncated.fa.gz", r"truncated or corrupt gzip"),
    "rna": (b">a\nACGU\n", "rna.fa", r"'U' is RNA, not DNA"),
}


@pytest.mark.filterwarnings("ignore::dnalm.genome.GenomeWarning")
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_naming_the_file(case, tmp_path):
    content, name, pattern = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GenomeError, match=pattern) as info:
        genome.read(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(GenomeError, match="no such file"):
        genome.read(tmp_path / "nope.fa")
    with pytest.raises(GenomeError, match="is a directory"):
        genome.read(tmp_path)


def test_empty_record_is_skipped_with_a_warning(write_fasta):
    with pytest.warns(genome.GenomeWarning, match=r"record 'b' \(line 3\) has no sequence; skipped"):
        g = genome.read(write_fasta(">a\nACGT\n>b\n>c\nGG\n"))
    assert g.names == ["a", "c"]


@pytest.mark.parametrize("case", ["empty file", "no header", "duplicate names", "digit", "protein", "truncated gzip"])
def test_cli_prints_one_line_and_exits_nonzero(case, tmp_path):
    content, name, pattern = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(content)
    result = refused_by_cli("genome", "inspect", path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnalm: error: ") and str(path) in lines[0]
    assert result.stdout == ""


def test_cli_missing_file_directory_and_warning(tmp_path):
    for target, pattern in [(tmp_path / "nope.fa", "no such file"), (tmp_path, "is a directory")]:
        result = run_cli("genome", "inspect", target)
        assert result.returncode == 1 and pattern in result.stderr
    path = tmp_path / "skip.fa"
    path.write_bytes(b">a\nACGT\n>b\n")
    result = run_cli("genome", "inspect", path)
    assert result.returncode == 0
    assert "dnalm: warning: " in result.stderr and "record 'b' (line 3) has no sequence; skipped" in result.stderr
