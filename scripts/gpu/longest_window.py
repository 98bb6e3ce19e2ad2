"""The longest window one device trains, by bisection: a model's memory-lean step (activation checkpointing, MLP
tiles, chunked head and loss) with AdamW, bf16 on CUDA (fp32 on CPU, for a dry run), and its tokens/s at the
lengths given. Out-of-memory at a length is caught and bisected below it.

    python scripts/gpu/longest_window.py MODEL LOW HIGH [--speed 8192,32768,131072] > result.json

This measures the model's step without DeepSpeed (the weights, gradients and AdamW states of one device in
full, which ZeRO-3 and offload would shrink): its longest window is a lower bound for the trainer's. Every token
is a target (an encoder is given next-token labels: the cost of its step, not its masked objective).
"""

import argparse
import json
import time

import torch

from dnalm.data.masking import next_token_labels
from dnalm.models import build_model, get_config
from dnalm.utils.devices import describe, resolve, synchronize, training_dtype
from dnalm.utils.memory import added_peak_mb

LEAN = dict(activation_checkpointing=True, mlp_tile=8192, loss_chunk=8192)


def step_once(model, optimizer, length: int, device) -> dict:
    ids = torch.randint(5, model.config.vocab_size, (1, length), device=device)
    labels = next_token_labels(ids)

    def work():
        started = time.perf_counter()
        out = model(ids, labels=labels)
        (out.loss_sum / length).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - started

    peak, seconds = added_peak_mb(device, work)
    return {"length": length, "seconds": seconds, "tokens_per_s": length / seconds, "peak_mb": peak}


def fits(model, optimizer, length: int, device) -> dict | None:
    try:
        return step_once(model, optimizer, length, device)
    except torch.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("low", type=int)
    parser.add_argument("high", type=int)
    parser.add_argument("--speed", default="", help="lengths to time (comma-separated)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention", default=None)
    args = parser.parse_args()
    device = resolve(args.device)
    overrides = {"attention": args.attention} if args.attention else {}
    config = get_config(args.model, vocab_size=16, max_seq_len=args.high, **LEAN, **overrides)
    model = build_model(config).to(device, training_dtype(device)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    result = {
        "device": describe(device),
        "model": args.model,
        "lean": LEAN,
        "overrides": overrides,
        "speed": [],
        "bisection": [],
    }
    for length in [int(x) for x in args.speed.split(",") if x]:
        fits(model, optimizer, min(length, 2048), device)  # warm-up
        result["speed"].append(fits(model, optimizer, length, device) or {"length": length, "oom": True})
    low, high = args.low, args.high  # multiples of 1024
    first = fits(model, optimizer, low, device)
    result["bisection"].append(first or {"length": low, "oom": True})
    while first and high - low > 1024:
        middle = (low + high) // 2 // 1024 * 1024
        point = fits(model, optimizer, middle, device)
        result["bisection"].append(point or {"length": middle, "oom": True})
        low, high = (middle, high) if point else (low, middle)
    result["longest_window"] = low if first else None
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
