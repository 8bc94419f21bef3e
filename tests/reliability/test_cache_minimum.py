"""A cache at the documented minimum carries 2 ranks x 2 DataLoader workers through a shuffled
epoch (issue 13 item 5).

Each consumer pins only what its share of ``cache_limit`` allows (at the minimum: the shard it
reads), not a fixed number of shards, so the node's consumers never pin the whole cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from astream import StreamingDataset
from astream.dataset import cache_limit_minimum
from tests.engine.datasets import write_mds

N = 1500
RANKS = 2
WORKERS = 2
REPO = Path(__file__).resolve().parents[2]

RANK_SCRIPT = """
import json, sys
from astream import StreamingDataLoader, StreamingDataset
src, cache, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
dataset = StreamingDataset(remote=src, local=cache, shuffle=True, batch_size=4, cache_limit=limit)
loader = StreamingDataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
ids = [int(i) for batch in loader for i in batch["id"]]
print(json.dumps(ids))
"""


def test_two_ranks_two_workers_at_the_minimum(tmp_path: Path) -> None:
    src = write_mds(tmp_path / "src", N)  # ~85 shards of ~4 KB
    probe = StreamingDataset(remote=src, local=tmp_path / "probe", shuffle=True)
    consumers = RANKS * WORKERS
    limit = cache_limit_minimum(probe.table, probe.window, consumers)
    assert limit >= probe.window.min_cache_bytes(probe.table, consumers)
    assert limit < sum(p.stat().st_size for p in src.glob("*.mds")) // 2, "too roomy to prove"
    procs = []
    for rank in range(RANKS):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(RANKS),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(RANKS),
            PYTHONPATH=str(REPO),
        )
        argv = [sys.executable, "-c", RANK_SCRIPT, str(src), str(tmp_path / "cache"), str(limit)]
        procs.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    seen: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-3000:]
        seen += json.loads(out.decode().strip().splitlines()[-1])
    assert set(seen) == set(range(N))
    assert len(seen) >= N
