"""Run batched inference in an order of your own with ``Prefetcher``.

Evaluation and inference loops often want samples in an order they choose: sorted by length to
pad less, one class at a time, the ids a previous step flagged. ``Prefetcher(dataset, ids)``
yields exactly those samples in exactly that order, and fetches their shards ahead in the order
they are first needed, within the dataset's prefetch window and the same node-local cache as
training.

The script writes a small MDS dataset of variable-length token sequences into a temporary folder
(standing in for a remote store), sorts the ids by length, and runs a tiny torch model over
batches of similar length. Run with ``python examples/prefetcher_inference.py``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from astream import MDSWriter, Prefetcher, StreamingDataset

SAMPLES = 300
BATCH = 32


def write_dataset(out: Path) -> NDArray[np.int64]:
    """Write the dataset; return each sample's length (a side table written with it)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 40, SAMPLES)
    columns = {"id": "int", "tokens": "ndarray:int64"}
    with MDSWriter(out=str(out), columns=columns, size_limit="8kb") as writer:
        for i in range(SAMPLES):
            tokens = rng.integers(0, 100, int(lengths[i]), dtype=np.int64)
            writer.write({"id": i, "tokens": tokens})
    return lengths


def batches(samples: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        remote, cache = Path(tmp) / "remote", Path(tmp) / "cache"
        lengths = write_dataset(remote)
        dataset = StreamingDataset(remote=str(remote), local=str(cache))

        # The order is ours: longest sequences first, so each batch pads little.
        order = np.argsort(-lengths, kind="stable")

        torch.manual_seed(0)
        model = nn.EmbeddingBag(100, 4, mode="mean")
        seen: list[int] = []
        padding = 0
        with torch.no_grad():
            for batch in batches(iter(Prefetcher(dataset, order)), BATCH):
                width = max(len(s["tokens"]) for s in batch)
                padding += sum(width - len(s["tokens"]) for s in batch)
                tokens = torch.cat([torch.from_numpy(np.array(s["tokens"])) for s in batch])
                offsets = torch.tensor([0, *np.cumsum([len(s["tokens"]) for s in batch])[:-1]])
                scores = model(tokens, offsets)
                assert scores.shape == (len(batch), 4)
                seen.extend(s["id"] for s in batch)

        assert seen == order.tolist(), "samples come in exactly the order asked for"
        stats = dataset.statistics()
        print(
            f"scored {len(seen)} samples in length order with {padding} padding tokens; "
            f"{stats.cache_misses} of {dataset.num_shards} shards fetched"
        )


if __name__ == "__main__":
    main()
