"""Where one training step of a model goes on a GPU: torch.profiler over forward + backward + AdamW (bf16).

    python scripts/gpu/profile_step.py decoder-1.5b 4 2048 OUT.json

Kernels are grouped by what they do (matrix products, attention, the optimizer, the rest); the JSON
holds the groups' shares of the GPU's busy time, the busy share of the step's wall time, and the 25
costliest kernels.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from dnalm.models import build_model, get_config
from dnalm.utils.devices import describe, synchronize

GROUPS = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex")),
    ("matmul", ("gemm", "cutlass", "sm90", "xmma", "nvjet", "cublas")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm and elementwise", ("elementwise", "vectorized", "reduce", "norm")),
)


def group(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in GROUPS if any(key in lowered for key in keys)), "other")


def main(model_name: str, batch: int, seq_len: int, out: str) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the CPU only to try the script
    changes = {"activation_checkpointing": True} if model_name == "decoder-1.5b" else {}
    with device:
        model = build_model(get_config(model_name, **changes)).to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len), device=device)

    def step():
        logits = model(ids).logits
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids.reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        step()
        synchronize(device)
        wall = time.perf_counter() - start
    kernels = [
        e
        for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
    ]
    busy = max(sum(e.self_device_time_total for e in kernels) / 1e6, 1e-9)
    shares = {}
    for e in kernels:
        shares[group(e.key)] = shares.get(group(e.key), 0.0) + e.self_device_time_total / 1e6
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]
    result = {
        "model": model_name,
        "batch": batch,
        "seq_len": seq_len,
        "step_seconds": round(wall, 4),
        "gpu_busy_seconds": round(busy, 4),
        "gpu_busy_share": round(busy / wall, 3),
        "groups": {
            k: {"seconds": round(v, 4), "share_of_busy": round(v / busy, 3)}
            for k, v in sorted(shares.items(), key=lambda kv: -kv[1])
        },
        "top_kernels": [
            {"name": e.key[:120], "calls": e.count, "seconds": round(e.self_device_time_total / 1e6, 4)} for e in top
        ],
        "device": describe(device),
        "torch": torch.__version__,
    }
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps({k: result[k] for k in ("step_seconds", "gpu_busy_share", "groups")}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
