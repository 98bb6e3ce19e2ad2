"""Peak memory of one training step (forward + backward) of decoder-tiny (vocab 4096) at several lengths, plain or
memory-lean (activation checkpointing, MLP tiles, chunked head and loss); prints one JSON line per length.

Run in a fresh process with MALLOC_MMAP_THRESHOLD_ set low, so that freed tensors go back to the system and the
resident high-water mark measures the step (dnalm.utils.memory)."""

import json
import sys

import torch

from dnalm.data.masking import next_token_labels
from dnalm.models import build_model, get_config
from dnalm.utils.memory import added_peak_mb


def main(mode: str, lengths: list[int]) -> None:
    torch.manual_seed(0)
    lean = dict(activation_checkpointing=True, mlp_tile=1024, loss_chunk=1024) if mode == "lean" else {}
    model = build_model(get_config("decoder-tiny", max_seq_len=max(lengths), **lean)).train()
    for length in [512, *lengths]:  # the first step pays one-time allocations (thread pools, kernels' scratch)
        ids = torch.randint(5, model.config.vocab_size, (1, length))

        def step():
            out = model(ids, labels=next_token_labels(ids))
            (out.loss_sum / length).backward()
            return out.logits is None

        peak, chunked = added_peak_mb("cpu", step)
        model.zero_grad(set_to_none=True)
        if length in lengths:
            print(json.dumps({"mode": mode, "length": length, "peak_mb": peak, "logits_chunked": chunked}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(x) for x in sys.argv[2].split(",")])
