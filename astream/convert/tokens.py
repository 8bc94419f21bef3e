"""Tokenized text packed into fixed-length sequences for language-model training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from astream.convert.base import Source
from astream.errors import ConfigError, FormatError

__all__ = ["PackedTokens", "pack_tokens"]


def pack_tokens(
    documents: Iterable[ArrayLike],
    seq_len: int,
    eos_id: int | None,
    *,
    dtype: DTypeLike = np.int32,
    pad_id: int | None = None,
) -> Iterator[NDArray[Any]]:
    """Concatenate token arrays, each followed by ``eos_id``, and cut them into sequences.

    Every yielded array has exactly ``seq_len`` tokens of ``dtype``. Tokens left over at the
    end are dropped, or padded with ``pad_id`` into one last sequence when it is given.

    :param documents: one array (or list) of token ids per document.
    :param seq_len: tokens per sequence.
    :param eos_id: the token appended after each document; ``None`` appends nothing.
    :param dtype: the sequences' dtype (``np.uint16`` halves the size for vocabularies under
        65,536 tokens).
    :param pad_id: pad the last, short sequence with this token instead of dropping it.
    :raises ConfigError: when ``seq_len`` is not positive.
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len must be positive, got {seq_len}")
    eos = None if eos_id is None else np.array([eos_id], dtype=dtype)
    pending: list[NDArray[Any]] = []
    count = 0
    for document in documents:
        tokens = np.asarray(document, dtype=dtype).ravel()
        pending.append(tokens)
        count += tokens.size
        if eos is not None:
            pending.append(eos)
            count += 1
        if count >= seq_len:
            flat = np.concatenate(pending)
            full = count // seq_len * seq_len
            # Copies, so that a yielded sequence does not keep the whole buffer alive.
            for begin in range(0, full, seq_len):
                yield flat[begin : begin + seq_len].copy()
            pending = [flat[full:]]
            count -= full
    if pad_id is not None and count:
        rest = np.concatenate(pending)
        yield np.concatenate([rest, np.full(seq_len - count, pad_id, dtype=dtype)])


@dataclass(frozen=True)
class PackedTokens(Source):
    """Token-id lists from another source (a ``tokens`` field of JSONL) packed into sequences.

    Each unit of the inner source is packed on its own (its leftover tokens are dropped), so
    units stay independent and conversion can run in parallel; with units of many
    documents the loss is a fraction of a sequence per unit. Column: ``tokens``, an
    ``ndarray:DTYPE:SEQ_LEN`` in MDS.

    :param inner: the source of documents.
    :param seq_len: tokens per sequence.
    :param eos_id: the token appended after each document (``None``: nothing).
    :param field: the inner samples' field holding the token ids.
    :param dtype: the sequences' dtype name.
    """

    inner: Source
    seq_len: int
    eos_id: int | None
    field: str = "tokens"
    dtype: str = "int32"

    def units(self) -> list[Any]:
        return self.inner.units()

    def _documents(self, unit: Any) -> Iterator[ArrayLike]:
        for sample in self.inner.read(unit):
            tokens = sample.get(self.field)
            if not isinstance(tokens, (list, np.ndarray)):
                raise FormatError(f"a sample has no token list in field {self.field!r}")
            yield tokens

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        for sequence in pack_tokens(
            self._documents(unit), self.seq_len, self.eos_id, dtype=self.dtype
        ):
            yield {"tokens": sequence}
