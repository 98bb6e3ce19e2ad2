"""The one exception family the command line turns into a one-line message and exit status 1."""


class DnalmError(Exception):
    """A user-facing error: bad input, a wrong path, an incompatible setting."""


class GenomeError(DnalmError):
    """A FASTA file that cannot be read as DNA; the message names file, record and line."""


class TokenizerError(DnalmError):
    """Bases a tokenizer cannot encode, ids it cannot decode, or a tokenizer folder it cannot load."""
