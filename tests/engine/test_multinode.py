"""Multi-node on one machine: torchrun (gloo), 2 nodes x 2 ranks x 2 workers, over loopback S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from astream import StreamingDataset
from astream.plan import World
from tests.engine.datasets import write_mds
from tests.engine.test_dataset import _upload_dir
from tests.servers.moto_s3 import CREDENTIALS, MotoS3
from tests.servers.process import free_port

JOB = Path(__file__).with_name("multinode_job.py")
N = 300


def _launch(nodes: int, ranks: int, out: Path, remote: str, cache: Path) -> None:
    port = free_port()
    env = {**os.environ, **CREDENTIALS, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={nodes}",
                f"--node_rank={node}",
                f"--nproc_per_node={ranks}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                str(JOB),
                str(out),
                remote,
                str(cache),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in range(nodes)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output[-4000:]


def _global_batches(out: Path, world_size: int) -> list[frozenset[int]]:
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]
    steps = max(len(b) for b in per_rank)
    return [
        frozenset(i for batches in per_rank if step < len(batches) for i in batches[step])
        for step in range(steps)
    ]


def _expected_ids(dataset: StreamingDataset, nodes: int, ranks: int) -> Counter[int]:
    ids: Counter[int] = Counter()
    for node in range(nodes):
        for rank in range(ranks):
            for worker in range(2):
                world = World(
                    num_nodes=nodes,
                    ranks_per_node=ranks,
                    node=node,
                    rank_in_node=rank,
                    workers_per_rank=2,
                    worker=worker,
                )
                ids.update(int(i) for i in dataset.worker_sample_ids(world, 0, 0) if i >= 0)
    return ids


@pytest.mark.slow
def test_two_nodes_match_one_node_and_download_once_per_node(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", moto_s3.endpoint_url)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    source = write_mds(tmp_path / "src", N)
    remote = _upload_dir(moto_s3, source)
    plan_view = StreamingDataset(local=source, shuffle=True, batch_size=4, num_canonical_nodes=2)

    two = tmp_path / "two-nodes"
    two.mkdir()
    _launch(2, 2, two, remote, tmp_path / "cache-two")
    one = tmp_path / "one-node"
    one.mkdir()
    _launch(1, 4, one, remote, tmp_path / "cache-one")

    # Every sample the right number of times (padding aside, each once), as the plan says.
    seen: Counter[int] = Counter()
    for rank in range(4):
        for batch in json.loads((two / f"rank{rank}.json").read_text()):
            seen.update(batch)
    assert seen == _expected_ids(plan_view, 2, 2)
    assert set(seen) == set(range(N))

    # The same global batches whatever the split into nodes.
    assert _global_batches(two, 4) == _global_batches(one, 4)

    # Each shard a node needs is downloaded at most once on that node, by whichever of its
    # processes needed it first; the others wait for it and read it from the node's cache.
    table = plan_view.table
    for node in range(2):
        ids = [
            i
            for rank in (2 * node, 2 * node + 1)
            for batch in json.loads((two / f"rank{rank}.json").read_text())
            for i in batch
        ]
        needed = {table.locate_one(i)[0] for i in ids}
        stats = [json.loads(p.read_text()) for p in two.glob(f"stats-node{node}-*.json")]
        assert len(stats) == 4  # 2 ranks x 2 workers
        cached = {p.name for p in (tmp_path / "cache-two" / f"node{node}").glob("*.mds")}
        names = {table.shards[k].raw.basename: k for k in needed}
        assert cached <= set(names)  # nothing the node did not need
        # One download per shard in the node's cache, and no other: never twice on a node. A
        # needed shard may be missing from it: a worker whose share of a shard came by range
        # reads, or from the landed bytes of a download it started, stops that download when
        # its epoch ends (the samples above were all read all the same).
        assert sum(s["misses"] for s in stats) == len(cached)
        assert sum(s["bytes"] for s in stats) == sum(
            table.shards[names[name]].raw.bytes for name in cached
        )
