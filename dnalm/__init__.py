"""dnalm: pretraining DNA language models, from whole genomes to sharded token streams to models."""

from dnalm import _moved, genome, tokenizers
from dnalm.utils.errors import DnalmError, GenomeError, TokenizerError

_moved.install()  # the module names of 0.1 (dnalm.finetune, dnalm.errors, ...) for one more release

__version__ = "0.1.0"
__all__ = [
    "DnalmError",
    "GenomeError",
    "TokenizerError",
    "embed",
    "genome",
    "load_pretrained",
    "tokenizers",
    "__version__",
]


def __getattr__(name: str):
    if name == "load_pretrained":  # imported on first use: it needs torch, genome reading does not
        from dnalm.bundle import load_pretrained

        return load_pretrained
    if name == "embed":
        from dnalm.use.embedding import embed

        return embed
    if name == "models":
        import dnalm.models as models

        return models
    raise AttributeError(f"module 'dnalm' has no attribute {name!r}")
