"""Mix several datasets into one epoch with ``Stream`` weights: proportion, repeat, choose.

Three small MDS datasets ("web", "books", "code") are written into a temporary folder, which
stands in for a remote store. Two mixes are built from them:

- by ``proportion``: 60% web, 30% books, 10% code of a 1,000-sample epoch, whatever the datasets'
  sizes (a small stream is repeated, a large one sub-sampled);
- by ``repeat`` and ``choose``: web twice over, books 1.5 times over, exactly 50 code samples.

For each, the script counts the samples each stream contributes to an epoch, and checks that a
second epoch draws the same counts. Run with ``python examples/mixing_streams.py``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from astream import MDSWriter, Stream, StreamingDataset

SIZES = {"web": 400, "books": 120, "code": 80}


def write_datasets(root: Path) -> None:
    for name, size in SIZES.items():
        columns = {"source": "str", "id": "int"}
        with MDSWriter(out=str(root / name), columns=columns, size_limit="1kb") as writer:
            for i in range(size):
                writer.write({"source": name, "id": i})


def epoch_counts(dataset: StreamingDataset) -> Counter[str]:
    return Counter(sample["source"] for sample in dataset)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        remote, cache = Path(tmp) / "remote", Path(tmp) / "cache"
        write_datasets(remote)

        def stream(name: str, **weight: float) -> Stream:
            return Stream(remote=str(remote / name), local=str(cache / name), **weight)

        by_proportion = StreamingDataset(
            streams=[
                stream("web", proportion=0.6),
                stream("books", proportion=0.3),
                stream("code", proportion=0.1),
            ],
            epoch_size=1000,
            shuffle=True,
            batch_size=10,
        )
        first, second = epoch_counts(by_proportion), epoch_counts(by_proportion)
        print(f"proportion 0.6/0.3/0.1 of 1000: {dict(sorted(first.items()))}")
        assert first == {"web": 600, "books": 300, "code": 100}
        assert second == first

        by_repeat = StreamingDataset(
            streams=[
                stream("web", repeat=2),
                stream("books", repeat=1.5),
                stream("code", choose=50),
            ],
            shuffle=True,
            batch_size=10,
        )
        counts = epoch_counts(by_repeat)
        print(f"repeat 2 / repeat 1.5 / choose 50: {dict(sorted(counts.items()))}")
        assert counts == {"web": 800, "books": 180, "code": 50}
        print(f"epoch size {by_repeat.epoch_size}; mixing streams done")


if __name__ == "__main__":
    main()
