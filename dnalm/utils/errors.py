"""The one exception family the command line turns into a one-line message and exit status 1."""


class DnalmError(Exception):
    """A user-facing error: bad input, a wrong path, an incompatible setting."""


class GenomeError(DnalmError):
    """A FASTA file that cannot be read as DNA; the message names file, record and line."""


class TokenizerError(DnalmError):
    """Bases a tokenizer cannot encode, ids it cannot decode, or a tokenizer folder it cannot load."""


def validated(model: type, values: dict, error: type[DnalmError], where: str):
    """Build a pydantic config, turning its first validation error into ``error("where: field: reason")``."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"])) or "config"
        raise error(f"{where}: {field}: {first['msg'].removeprefix('Value error, ')}") from None
