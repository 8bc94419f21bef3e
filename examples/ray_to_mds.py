"""Write a Ray Dataset as one astream dataset with MDSDatasink, then run batch inference
over it with read_mds.

Starts Ray locally with 2 CPUs; with ``RAY_ADDRESS`` set (or ``--address``) it joins that
cluster instead, and ``--out`` takes a store URL (``s3://bucket/prefix``): see docs/scale.md.

    python examples/ray_to_mds.py [--rows 2000] [--out DIR_OR_URL] [--address ADDR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np
import ray

from astream.integrations.ray import MDSDatasink, read_mds


def make_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    ids = batch["id"]
    return {
        "id": ids,
        "text": np.array([f"document {i}" for i in ids], dtype=object),
        "embedding": np.stack([ids, -ids], axis=1).astype(np.float32),
    }


def score(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stands in for a model: one number per sample."""
    return {"id": batch["id"], "score": batch["embedding"].sum(axis=1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", help="a store URL or folder (default: a temporary folder)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    args = parser.parse_args()
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # part order = the dataset's order
    context.enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "dataset")
        sink = MDSDatasink(out, compression="zstd", size_limit="64kb")
        ray.data.range(args.rows, override_num_blocks=4).map_batches(make_rows).write_datasink(sink)
        assert sink.index is not None
        print(f"{len(sink.index.shards)} shards, {sink.index.samples} samples at {out}")
        # Offline batch inference: each read task fetches only its own shards.
        scores = read_mds(out).map_batches(score).take_all()
        assert [int(row["id"]) for row in scores] == list(range(args.rows))
        assert all(row["score"] == 0 for row in scores)
        print(f"ray wrote {args.rows} samples and scored them with read_mds")
    ray.shutdown()


if __name__ == "__main__":
    main()
