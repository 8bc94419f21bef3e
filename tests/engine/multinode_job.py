"""One rank of a multi-node run, launched by torchrun from ``test_multinode.py``.

Usage: ``torchrun ... multinode_job.py OUT REMOTE CACHE_ROOT``. Each node caches into
``CACHE_ROOT/node<N>``; each rank writes the ids of its batches to ``OUT/rank<R>.json`` and each
DataLoader worker its download counts to ``OUT/stats-node<N>-<pid>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist

from astream import StreamingDataLoader, StreamingDataset


class RecordingDataset(StreamingDataset):
    """Writes this worker's engine statistics once its share of the epoch is done."""

    out: Path
    node: int

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from super().__iter__()
        stats = self.statistics()
        record = {"misses": stats.cache_misses, "bytes": stats.bytes_downloaded}
        path = self.out / f"stats-node{self.node}-{os.getpid()}.json"
        path.write_text(json.dumps(record))


def main() -> None:
    out, remote, cache_root = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    node = rank // int(os.environ["LOCAL_WORLD_SIZE"])
    dataset = RecordingDataset(
        remote=remote,
        local=cache_root / f"node{node}",
        shuffle=True,
        batch_size=4,
        num_canonical_nodes=2,
    )
    dataset.out, dataset.node = out, node
    loader = StreamingDataLoader(dataset, batch_size=4, num_workers=2)
    batches = [batch["id"].tolist() for batch in loader]
    (out / f"rank{rank}.json").write_text(json.dumps(batches))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
