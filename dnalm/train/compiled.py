"""torch.compile applied from outside the model, as ZeRO and sequence parallelism are (``compile`` in a train config).

- ``model``: DeepSpeed's ``engine.compile()``, the whole model as one region.
- ``blocks``: each block's ``forward`` (a transformer's or the CNN's) compiled on its own: one graph that every block
  reuses, compiled once; the embedding, head and loss stay eager. Under ZeRO-3 each block is first made a ZeRO-3
  "leaf" (``set_z3_leaf_module``), so DeepSpeed gathers the whole block's parameters in the block's own hooks, which
  run eagerly around the compiled forward, instead of hooking every layer inside it (hooks that a compiled region
  would trace, break at and recompile for).

Either way the parameters keep their names, so a compiled run's checkpoint resumes uncompiled and the other way
round. Which is faster on a GPU is measured by ``scripts/gpu/run.sh``'s compile section.
"""

from __future__ import annotations

import torch

from dnalm.utils.errors import DnalmError


def _blocks(model: torch.nn.Module):
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise DnalmError(f"compile=blocks: {type(model).__name__} has no blocks to compile; use compile=model")
    return blocks


def prepare(model: torch.nn.Module, mode: str) -> None:
    """Before ``deepspeed.initialize``: with ``blocks``, every block a ZeRO-3 leaf (no effect under ZeRO-1/2)."""
    if mode == "blocks":
        from deepspeed.utils import set_z3_leaf_module

        for block in _blocks(model):
            set_z3_leaf_module(block, True)


def compile_engine(engine, mode: str) -> None:
    """After ``deepspeed.initialize``: compile what ``mode`` names."""
    from deepspeed.accelerator import get_accelerator

    if mode == "model":
        engine.compile()
    elif mode == "blocks":
        backend = get_accelerator().get_compile_backend()
        for block in _blocks(engine.module):
            block.forward = torch.compile(block.forward, backend=backend)


def compiled_blocks(model: torch.nn.Module) -> bool:
    """Whether every block's forward is compiled (``compile=blocks``)."""
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return False
    return all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in blocks)
