"""Small datasets whose every sample can be checked, for the reliability tests and the soak."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from astream import MDSWriter


def payload(i: int, size: int = 64, generation: int = 0) -> bytes:
    """Sample ``i``'s bytes in dataset ``generation``: differs per sample and per generation."""
    seed = f"{generation}:{i}".encode()
    out = b""
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return out[:size]


def write_dataset(
    out: Any,
    num_samples: int,
    *,
    generation: int = 0,
    size: int = 64,
    size_limit: int = 2048,
    **kwargs: Any,
) -> None:
    """Write samples ``{"id": i, "gen": generation, "data": payload(i, size, generation)}``."""
    with MDSWriter(
        out=out,
        columns={"id": "int", "gen": "int", "data": "bytes"},
        size_limit=size_limit,
        **kwargs,
    ) as writer:
        for i in range(num_samples):
            writer.write({"id": i, "gen": generation, "data": payload(i, size, generation)})


def check(sample: dict[str, Any], size: int = 64) -> tuple[int, int]:
    """``(generation, id)`` of a sample, after checking its bytes are exactly those written."""
    i, generation = int(sample["id"]), int(sample["gen"])
    assert sample["data"] == payload(i, size, generation), f"sample {i} of gen {generation} wrong"
    return generation, i


def shard_bytes(folder: Path) -> int:
    """Bytes of the MDS shard files directly in ``folder``."""
    return sum(p.stat().st_size for p in folder.glob("*.mds"))


def full_cache(tmp_path: Path, num_samples: int) -> tuple[Path, Path, int]:
    """``(remote, cache, shard bytes)``: a dataset read once in full, so its cache holds it all."""
    from astream import StreamingDataset

    remote, cache = tmp_path / "remote", tmp_path / "cache"
    write_dataset(remote, num_samples)
    dataset = StreamingDataset(remote=str(remote), local=cache, batch_size=1)
    assert sorted(check(s)[1] for s in dataset) == list(range(num_samples))
    size = shard_bytes(remote)
    assert shard_bytes(cache) == size
    return remote, cache, size


def local_copy(src: Path, dst: Path) -> Path:
    """A plain copy of a dataset folder (files only, one level)."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def generation_shape(generation: int) -> tuple[int, int]:
    """``(samples, payload bytes)`` of rewrite generation ``generation``: each differs."""
    return 600 + 7 * generation, 64 + 16 * generation


def classify_read(remote: str, cache: Path, **options: Any) -> str:
    """Stream the whole dataset once: ``"gen<G>"`` when every sample of exactly one generation
    came out, each with its exact bytes; ``"error:<AstreamError subclass>"``; else ``"MIXED"``
    (old and new samples together, or wrong bytes) or ``"bad:<type>"`` (a non-astream error).
    """
    from astream import StreamingDataset
    from astream.errors import AstreamError

    try:
        dataset = StreamingDataset(remote=remote, local=cache, batch_size=1, **options)
        samples = list(dataset)
    except AstreamError as exc:
        return f"error:{type(exc).__name__}"
    except Exception as exc:
        return f"bad:{type(exc).__name__}: {str(exc)[:200]}"
    gens = {int(s["gen"]) for s in samples}
    if len(gens) != 1:
        return "MIXED" if gens else "empty"
    (gen,) = gens
    count, size = generation_shape(gen)
    ids = sorted(int(s["id"]) for s in samples)
    exact = ids == list(range(count)) and all(
        s["data"] == payload(int(s["id"]), size, gen) for s in samples
    )
    return f"gen{gen}" if exact else "MIXED"
