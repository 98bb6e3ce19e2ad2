"""dnalm: pretraining DNA language models, from whole genomes to sharded token streams to models."""

from dnalm import genome, tokenizers
from dnalm.errors import DnalmError, GenomeError, TokenizerError

__version__ = "0.1.0"
__all__ = ["DnalmError", "GenomeError", "TokenizerError", "genome", "tokenizers", "__version__"]
