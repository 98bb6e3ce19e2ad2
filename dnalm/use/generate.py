"""``dnalm generate``: sample DNA from a decoder bundle (temperature, absolute top-k, top-p), batched, cached.

Decoding is incremental: the KV cache for softmax attention, the recurrent state for causal
Performer. Special tokens are never sampled, so every sample decodes to bases. The same seed
gives the same output. (performer-pytorch's own sampling helper keeps ``int((1-thres)·vocab)``
logits, which rounds to zero for a DNA vocabulary; top-k here is an absolute count.) Sampling
happens on the model's device, with a generator of that device: the same seed gives the same
output on a given device.
"""

from __future__ import annotations

import time

import torch

from dnalm.tokenizers import NUM_SPECIAL
from dnalm.utils.errors import DnalmError


class GenerationError(DnalmError):
    """Settings or a model that cannot generate."""


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    logits = logits.float().clone()
    logits[..., :NUM_SPECIAL] = float("-inf")
    if temperature <= 0:  # greedy
        best = logits.argmax(-1, keepdim=True)
        return torch.full_like(logits, float("-inf")).scatter(-1, best, 0.0)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, index = logits.sort(-1, descending=True)
        mass = ordered.softmax(-1)
        drop = mass.cumsum(-1) - mass > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, float("-inf")))
    return logits


@torch.no_grad()
def generate_ids(
    model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int = 0,
    use_cache: bool = True,
) -> torch.Tensor:
    """(num_samples, prompt + new) ids."""
    config = model.config
    if config.arch != "decoder":
        raise GenerationError(f"generation needs a decoder; this bundle holds an '{config.arch}' model")
    if config.positions == "learned" and prompt_ids.numel() + max_new_tokens > config.max_seq_len:
        raise GenerationError(f"learned positions stop at {config.max_seq_len} tokens; ask for fewer new tokens")
    if top_k is not None and top_k < 1:
        raise GenerationError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise GenerationError(f"--top-p must be in (0, 1], got {top_p}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = prompt_ids.to(device).view(1, -1).repeat(num_samples, 1)
    cache, step_input = None, ids
    for _ in range(max_new_tokens):
        if use_cache:
            out = model(step_input, cache=cache, use_cache=True, logits=False)
            cache = out.cache
        else:
            out = model(ids, logits=False)
        # the head on the last position only: a long prompt never makes (T, vocab) logits
        logits = filter_logits(model.head_logits(out.hidden[:, -1]), temperature, top_k, top_p)
        chosen = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, chosen], 1)
        step_input = chosen
    return ids


def generate(model, tokenizer, prompt: str, max_new_tokens: int, **settings) -> list[str]:
    """Sampled continuations of ``prompt`` (validated DNA), each as bases: the prompt then the new part."""
    encoding = tokenizer.encode(prompt)
    if len(encoding) == 0:
        raise GenerationError("the prompt is empty: give at least one base")
    ids = generate_ids(model, torch.from_numpy(encoding.ids.astype("int64")), max_new_tokens, **settings)
    return [tokenizer.decode(row.cpu().numpy()) for row in ids]


def to_fasta(sequences: list[str], prompt_length: int, description: str, width: int = 60) -> str:
    lines = []
    for i, seq in enumerate(sequences):
        lines.append(f">sample_{i} prompt_bases={prompt_length} {description}")
        lines += [seq[j : j + width] for j in range(0, len(seq), width)]
    return "\n".join(lines) + "\n"


def tokens_per_second(model, prompt_ids: torch.Tensor, new_tokens: int, use_cache: bool) -> float:
    from dnalm.utils.devices import model_device, synchronize

    synchronize(model_device(model))
    start = time.perf_counter()
    generate_ids(model, prompt_ids, new_tokens, use_cache=use_cache)
    synchronize(model_device(model))
    return new_tokens / (time.perf_counter() - start)
