"""dnalm: pretraining DNA language models, from whole genomes to sharded token streams to models."""

from dnalm import genome, tokenizers
from dnalm.errors import DnalmError, GenomeError, TokenizerError

__version__ = "0.1.0"
__all__ = ["DnalmError", "GenomeError", "TokenizerError", "embed", "genome", "load_pretrained", "tokenizers", "__version__"]


def __getattr__(name: str):
    if name == "load_pretrained":  # imported on first use: it needs torch, genome reading does not
        from dnalm.bundle import load_pretrained

        return load_pretrained
    if name == "embed":
        from dnalm.embedding import embed

        return embed
    if name == "models":
        import dnalm.models as models

        return models
    raise AttributeError(f"module 'dnalm' has no attribute {name!r}")
