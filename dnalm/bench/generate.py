"""``dnalm bench generate``: new tokens per second with the decoding cache against full recomputation."""

from __future__ import annotations

from pathlib import Path

import torch

from dnalm.bench import report

TARGET_SPEEDUP = 10.0


def run(model_name: str, new_tokens: int, out_dir: Path, prompt_length: int = 16, device: str = "auto") -> dict:
    from dnalm.models import build_model, get_config
    from dnalm.use.generate import tokens_per_second
    from dnalm.utils.devices import describe, resolve

    target = resolve(device)
    if Path(model_name).is_dir():
        from dnalm.bundle import load_pretrained

        model, _ = load_pretrained(model_name)
    else:
        torch.manual_seed(0)
        model = build_model(get_config(model_name, vocab_size=10)).eval()
    prompt = torch.randint(5, 9, (prompt_length,))
    rows = []
    for attention in ("sdpa", "performer"):
        if model.config.attention != attention:
            if attention == "performer" and model.config.positions == "alibi":
                continue
            torch.manual_seed(0)
            variant = build_model(model.config.replace(attention=attention)).eval()
        else:
            variant = model
        variant = variant.to(target)
        cached = tokens_per_second(variant, prompt, new_tokens, use_cache=True)
        full = tokens_per_second(variant, prompt, new_tokens, use_cache=False)
        rows.append(
            {
                "attention": attention,
                "cached_tokens_per_s": round(cached, 1),
                "recompute_tokens_per_s": round(full, 1),
                "speedup": round(cached / full, 1),
                "meets_target": cached / full >= TARGET_SPEEDUP,
            }
        )
    result = {
        "benchmark": "generate",
        "command": f"dnalm bench generate --model {model_name} --new-tokens {new_tokens}",
        "machine": report.machine(),
        "device": describe(target),
        "dtype": "fp32",
        "model": model.config.name,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_length,
        "batch": 1,
        "rows": rows,
        "target": f"cached ≥ {TARGET_SPEEDUP:.0f}× recomputation at {new_tokens} new tokens",
    }
    report.write(result, out_dir, "generate")
    _plot(result, out_dir)
    return result


def _plot(result: dict, out_dir: Path) -> None:
    import numpy as np

    from dnalm.utils.plots import pyplot

    plt = pyplot()

    rows = result["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, [r["cached_tokens_per_s"] for r in rows], 0.4, label="cache / recurrent state")
    ax.bar(x + 0.2, [r["recompute_tokens_per_s"] for r in rows], 0.4, label="full recomputation")
    ax.set_xticks(x, [f"{r['attention']} ({r['speedup']}×)" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("new tokens / s")
    ax.legend(fontsize=8)
    ax.set_title(
        f"dnalm bench generate — {result['model']}, {result['new_tokens']} new tokens\n{report.device_label(result)}",
        fontsize=9,
    )
    report.save_plot(fig, out_dir, "generate")
