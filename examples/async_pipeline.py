"""Stream a dataset with ``async for`` inside an asyncio pipeline.

``async for sample in dataset`` runs astream's engine on your own event loop, with no thread:
downloads and the prefetch window are tasks of that loop. Here a reader task streams samples
into a bounded queue, and several worker tasks take them off it and "process" them (an
``asyncio.sleep`` stands in for a call to a tokenizer service or a model server). The queue's
bound is the pipeline's backpressure: when the workers fall behind, the reader waits.

The script writes a small JSONL dataset into a temporary folder, which stands in for a remote
store; a second folder is the node-local cache. Run with ``python examples/async_pipeline.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from astream import JSONLWriter, StreamingDataset

SAMPLES = 400
WORKERS = 4


def write_dataset(out: Path) -> None:
    with JSONLWriter(
        out=str(out), columns={"id": "int", "text": "str"}, size_limit="2kb", compression="zstd"
    ) as writer:
        for i in range(SAMPLES):
            writer.write({"id": i, "text": f"document {i}: " + "word " * (i % 7)})


async def read(dataset: StreamingDataset, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
    async for sample in dataset:
        await queue.put(sample)
    for _ in range(WORKERS):
        await queue.put(None)  # one end marker per worker


async def work(queue: asyncio.Queue[dict[str, Any] | None], words: list[int]) -> int:
    done = 0
    while (sample := await queue.get()) is not None:
        await asyncio.sleep(0)  # an awaitable call per sample: an RPC, a database write...
        words.append(len(sample["text"].split()))
        done += 1
    return done


async def pipeline(remote: Path, cache: Path) -> None:
    dataset = StreamingDataset(remote=str(remote), local=str(cache), shuffle=True, batch_size=8)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=32)
    words: list[int] = []
    reader = asyncio.create_task(read(dataset, queue))
    counts = await asyncio.gather(*(work(queue, words) for _ in range(WORKERS)))
    await reader
    assert sum(counts) == SAMPLES, "every sample once"
    stats = dataset.statistics()
    print(f"workers processed {counts} samples ({sum(counts)} in all, {sum(words)} words)")
    print(
        f"engine: {stats.cache_misses} shards downloaded, {stats.bytes_downloaded} bytes, "
        f"{stats.consumer_wait_s:.3f} s waiting for data"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        remote, cache = Path(tmp) / "remote", Path(tmp) / "cache"
        write_dataset(remote)
        asyncio.run(pipeline(remote, cache))


if __name__ == "__main__":
    main()
