"""Peak RSS added by GenomeStreams over a manifest of SAMPLES samples in SHARDS shards, and by both orders.

The manifest is written with the real tokenizer folder beside it but no shard files: building the
stream and computing the positions of whole global batches reads no shard. Prints JSON.

    python tests/scripts/order_memory.py FOLDER SAMPLES SHARDS
"""

import json
import sys
from pathlib import Path

import numpy as np

from dnalm.utils.memory import peak_rss_bytes


def peak_mb() -> float:
    return peak_rss_bytes() / 2**20


def main(folder: str, samples: int, shards: int) -> None:
    from dnalm.data.manifest import Manifest
    from dnalm.data.stream import GenomeStream

    folder = Path(folder)
    manifest = Manifest.load(folder)
    counts = np.full(shards, samples // shards)
    counts[: samples - counts.sum()] += 1
    entry = manifest.splits["train"].shards[0]
    split = manifest.splits["train"].model_copy(
        update={
            "num_samples": int(samples),
            "shards": [
                entry.model_copy(update={"path": f"train/shard-{i:06d}.tar", "num_samples": int(c)})
                for i, c in enumerate(counts)
            ],
        }
    )
    manifest.model_copy(update={"splits": {"train": split}}).save(folder)
    before = peak_mb()
    positions = {}
    for order in ("global", "blocks"):
        stream = GenomeStream(folder, batch_size=8, rank=3, world_size=64, seed=1, order=order)
        positions[order] = []
        for epoch in (0, 1):
            for step in (0, 1000, (samples // 512) - 1):
                mine = step * stream.global_batch + stream.rank + stream.world_size * np.arange(stream.batch_size)
                shard, index = stream.order(epoch)(epoch, mine)
                positions[order].append([shard.tolist(), index.tolist()])
    print(json.dumps({"added_peak_mb": peak_mb() - before, "positions": positions, "total": stream.total}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
