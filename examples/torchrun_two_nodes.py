"""A two-node ``torchrun`` launch on one machine: 2 simulated nodes x 1 rank, gloo on loopback.

The script writes a small MDS dataset into a temporary folder (standing in for a remote store)
and launches two ``python -m torch.distributed.run --nnodes=2 --node_rank=i`` processes, as a
cluster scheduler would on two machines. Each "node" has its own cache directory, as each real
node has its own local disk. Every rank streams its part of each global batch with a
``StreamingDataLoader``; the launcher then checks that the ranks together saw every sample of
the epoch exactly once.

Run with ``python examples/torchrun_two_nodes.py``. The same file is the training script that
torchrun starts (``--worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from astream import MDSWriter, StreamingDataLoader, StreamingDataset

SAMPLES = 320
BATCH = 8  # per device: the global batch is 16


def write_dataset(out: Path) -> None:
    columns = {"id": "int", "x": "float32"}
    with MDSWriter(out=str(out), columns=columns, size_limit="1kb") as writer:
        for i in range(SAMPLES):
            writer.write({"id": i, "x": float(i)})


def worker(remote: str, cache: str, out: str) -> None:
    """One rank: join the process group, stream this rank's share of an epoch."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = StreamingDataset(remote=remote, local=cache, shuffle=True, batch_size=BATCH)
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=1)
    ids: list[int] = []
    for batch in loader:
        ids.extend(batch["id"].tolist())
    # Every rank yields the same number of samples per step, so they stay in lockstep.
    count = torch.tensor([len(ids)])
    dist.all_reduce(count)
    print(f"rank {rank} of {world}: {len(ids)} samples ({int(count)} over all ranks)", flush=True)
    Path(out).write_text(json.dumps({"rank": rank, "ids": ids, "state": loader.state_dict()}))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        remote = work / "remote"
        write_dataset(remote)
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        nodes = []
        for node in range(2):
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                __file__,
                "--worker",
                str(remote),
                str(work / f"node{node}-cache"),
                str(work / f"node{node}.json"),
            ]
            nodes.append(subprocess.Popen(command, env=env))
        codes = [process.wait(timeout=120) for process in nodes]
        assert codes == [0, 0], f"torchrun exit statuses {codes}"

        results = [json.loads((work / f"node{node}.json").read_text()) for node in range(2)]
        seen = [i for result in results for i in result["ids"]]
        assert sorted(seen) == list(range(SAMPLES)), "every sample exactly once over the ranks"
        for result in results:
            print(f"rank {result['rank']}: {len(result['ids'])} samples")
        print(f"two nodes saw {len(seen)} samples; end-of-epoch state {results[0]['state']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs=3, metavar=("REMOTE", "CACHE", "OUT"))
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
    else:
        launch()


if __name__ == "__main__":
    main()
