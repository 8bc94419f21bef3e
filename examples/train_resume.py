"""Train a tiny model with StreamingDataLoader, checkpoint mid-epoch, resume in a new process.

The script writes a small MDS dataset into a temporary folder and streams it through the engine
(the folder stands in for a remote store; a second folder is the node-local cache). It then:

1. trains two epochs without interruption, recording which sample ids each step saw;
2. trains again from scratch, stops in the middle of the first epoch and saves a checkpoint
   holding the model, the optimizer and ``loader.state_dict()``;
3. starts a new Python process that loads the checkpoint and trains to the end;
4. checks that the resumed run saw exactly the samples the uninterrupted run saw after the same
   step, and ends with the same weights.

Run with ``python examples/train_resume.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from astream import MDSWriter, StreamingDataLoader, StreamingDataset

SAMPLES = 600
BATCH = 16
EPOCHS = 2
STOP_AFTER = 13  # steps of the first epoch before the interruption


def write_dataset(out: Path) -> None:
    """Two Gaussian blobs in 8 dimensions, labelled 0 and 1, with each sample's id."""
    rng = np.random.default_rng(0)
    columns = {"id": "int", "x": "ndarray:float32:8", "y": "int"}
    with MDSWriter(out=str(out), columns=columns, compression="zstd", size_limit="4kb") as writer:
        for i in range(SAMPLES):
            label = i % 2
            x = rng.normal(loc=2.0 * label - 1.0, size=8).astype(np.float32)
            writer.write({"id": i, "x": x, "y": label})


def make_loader(remote: Path, cache: Path) -> StreamingDataLoader:
    dataset = StreamingDataset(
        remote=str(remote), local=str(cache), shuffle=True, shuffle_seed=7, batch_size=BATCH
    )
    return StreamingDataLoader(dataset, batch_size=BATCH, num_workers=2)


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def train(
    loader: StreamingDataLoader,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    first_epoch: int = 0,
    stop_after: int | None = None,
    checkpoint: Path | None = None,
) -> list[list[int]]:
    """Train to the end (or stop after ``stop_after`` steps); return each step's sample ids."""
    steps: list[list[int]] = []
    loss_fn = nn.CrossEntropyLoss()
    for _epoch in range(first_epoch, EPOCHS):
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["x"]), batch["y"])
            loss.backward()
            optimizer.step()
            steps.append(batch["id"].tolist())
            if stop_after is not None and len(steps) == stop_after:
                assert checkpoint is not None
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "loader": loader.state_dict(),
                    },
                    checkpoint,
                )
                return steps
    return steps


def resume(remote: Path, cache: Path, checkpoint: Path, result: Path) -> None:
    """The second process: load the checkpoint, train to the end, save ids and weights."""
    saved: dict[str, Any] = torch.load(checkpoint)
    loader = make_loader(remote, cache)
    model, optimizer = make_model()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    loader.load_state_dict(saved["loader"])
    print(f"resuming from {saved['loader']}")
    steps = train(loader, model, optimizer, first_epoch=saved["loader"]["epoch"])
    torch.save({"steps": steps, "model": model.state_dict()}, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resume", nargs=4, metavar=("REMOTE", "CACHE", "CKPT", "RESULT"))
    args = parser.parse_args()
    if args.resume:
        resume(*(Path(p) for p in args.resume))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        remote, cache = work / "remote", work / "cache"
        write_dataset(remote)

        model, optimizer = make_model()
        full = train(make_loader(remote, cache), model, optimizer)
        full_weights = model.state_dict()
        print(f"uninterrupted: {len(full)} steps over {EPOCHS} epochs")

        checkpoint = work / "checkpoint.pt"
        model, optimizer = make_model()
        first = train(
            make_loader(remote, cache),
            model,
            optimizer,
            stop_after=STOP_AFTER,
            checkpoint=checkpoint,
        )
        print(f"interrupted after {len(first)} steps; checkpoint saved")

        result = work / "resumed.pt"
        command = [sys.executable, __file__, "--resume", str(remote), str(cache)]
        subprocess.run([*command, str(checkpoint), str(result)], check=True)
        resumed: dict[str, Any] = torch.load(result)

        assert first == full[:STOP_AFTER], "the first part matches the uninterrupted run"
        assert resumed["steps"] == full[STOP_AFTER:], "resumed batches differ"
        for name, value in full_weights.items():
            assert torch.equal(value, resumed["model"][name]), f"weights differ: {name}"
        print(
            json.dumps({"steps_before": len(first), "steps_after": len(resumed["steps"])}),
            "resumed run matches the uninterrupted run",
        )


if __name__ == "__main__":
    main()
