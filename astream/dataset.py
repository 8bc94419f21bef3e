"""``StreamingDataset``: a drop-in for mosaicml-streaming's, on astream's engine.

Construction loads each stream's ``index.json`` (once per node, through the cache directory) and
resolves the sample order's weights; it starts no thread and holds no session, lock or loop, so
the dataset pickles into DataLoader workers. Constructed inside a running event loop (asyncio or
trio), it defers that load to first use instead of blocking the loop (see the class docstring).
Each process builds its engine runtime (caches, counters, a fetcher on the process's IO loop) on
first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from astream._warn import warn_at_caller
from astream.engine.cache import ShardCache, claim_source, fetch_index, folder_bytes
from astream.engine.fetch import Counters, EngineStatistics, Fetcher, make_caches, remote_bytes
from astream.engine.loop import IOLoop, io_loop
from astream.engine.prefetch import (
    ReaderPool,
    aiterate,
    consumer_limits,
    evicted_error,
    iter_samples,
)
from astream.engine.table import ShardTable, StreamSource
from astream.engine.window import WindowConfig
from astream.engine.working_set import check_cache_plan
from astream.errors import (
    CacheLimitError,
    CacheLimitWarning,
    ConfigError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ObjectNotFoundError,
    PlanError,
    UnsafeTypeError,
    WorldError,
)
from astream.format import DatasetIndex, ShardInfo, get_encoding, load_index
from astream.plan import EpochPlan, OrderConfig, PlanState, StreamWeighting, World, detect_world
from astream.plan.weights import resample
from astream.storage import open_store
from astream.stream import (
    DEFAULT_DOWNLOAD_RETRY,
    DEFAULT_DOWNLOAD_TIMEOUT,
    Stream,
    streams_registry,
)
from astream.units import parse_bytes

try:  # torch is an extra: without it the dataset is a plain iterable
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - exercised only without the torch extra
    _Base = object  # type: ignore[assignment,misc]

__all__ = ["StreamingDataset"]

T = TypeVar("T")
Sample = dict[str, Any]

# Serialises lazy index loads (a dataset's first use may come from several threads at once).
_LOAD_LOCK = threading.RLock()


def _in_event_loop() -> bool:
    """Whether this thread is running an event loop (asyncio, or trio when it is imported)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:  # run outside the except block: its errors must not chain "no running loop"
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="astream-index")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _source_id(source: StreamSource) -> str:
    """The remote as a cache directory records it: absolute for a path, no trailing slash."""
    assert source.remote is not None
    remote = source.remote.rstrip("/")
    return remote if "://" in remote else os.path.abspath(remote)


async def _load_indexes(
    sources: Sequence[StreamSource], splits: Sequence[str]
) -> list[DatasetIndex]:
    async def one(source: StreamSource, split: str) -> DatasetIndex:
        local_index = source.local / "index.json"
        if source.remote is None:
            if not local_index.is_file():
                raise DatasetNotFoundError(
                    f"no dataset at {source.local}: {local_index} does not exist"
                )
            return load_index(local_index.read_bytes(), source=str(local_index))
        # Before the index: a directory that caches another remote must not serve its files.
        await anyio.to_thread.run_sync(claim_source, source.local, _source_id(source), split)
        store = open_store(source.remote, retry=source.retry, transfer=source.transfer)
        try:
            data = await fetch_index(store, source.local)
        except DatasetNotFoundError:
            raise
        except ObjectNotFoundError as exc:
            raise DatasetNotFoundError(
                f"no dataset at {store.url}: {store.join('index.json')} does not exist"
            ) from exc
        finally:
            await store.aclose()
        return load_index(data, source=store.join("index.json"))

    return list(await asyncio.gather(*(one(s, p) for s, p in zip(sources, splits, strict=True))))


def sample_keys(key: Any, size: int) -> list[int]:
    """The sample ids an index key names: an int (negative from the end), a slice, or a
    sequence or array of ints."""
    if isinstance(key, slice):
        return list(range(*key.indices(size)))
    if isinstance(key, int | np.integer):
        keys = [int(key)]
    else:
        array = np.asarray(key)
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"dataset indices must be integers, got {array.dtype}")
        keys = [int(k) for k in array.reshape(-1)]
    out = []
    for k in keys:
        if not -size <= k < size:
            raise IndexError(f"sample index {k} out of range for {size} samples")
        out.append(k + size if k < 0 else k)
    return out


def _check_replication(replication: int | None) -> int | None:
    if replication is None:
        return None
    if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
        raise WorldError(f"replication must be a positive int, got {replication!r}")
    return replication


def _window_shards_at_once(window: WindowConfig) -> int:
    """Shards one worker needs on disk at once: the one it reads (pinned) and the ``shards``
    fetched ahead of it (see :meth:`WindowConfig.min_cache_bytes`; under a small limit it pins
    no more than that leaves)."""
    return 1 + window.shards


#: Bytes of astream's own files per shard in use (its LRU stamp) and per cache directory (its
#: source record), counted by ``cache_limit`` like every other byte of the directory.
_STAMP_BYTES = 256
_RECORD_BYTES = 512


def cache_limit_minimum(table: ShardTable, window: WindowConfig, consumers: int = 1) -> int:
    """The smallest dataset-wide ``cache_limit`` that holds, in each cached stream's directory,
    its ``index.json``, astream's own files, and the shards ``consumers`` iterating processes of
    the node (ranks x DataLoader workers) need at once: each the shard it reads plus
    ``prefetch_shards`` ahead (:meth:`WindowConfig.min_cache_bytes`), each shard at its raw plus
    compressed size, as both exist while it decompresses.

    A dataset-wide limit is split between streams by their size (:func:`make_caches`), so the
    minimum is the largest of each stream's need scaled by its share.
    """
    totals = [0] * len(table.sources)
    largest = [0] * len(table.sources)
    for k, shard in enumerate(table.shards):
        stream = int(table.shard_stream[k])
        peak = shard.raw.bytes + (shard.zip.bytes if shard.zip else 0)
        totals[stream] += peak  # as make_caches sizes each stream's share
        if shard.raw_meta is not None:
            peak += shard.raw_meta.bytes + (shard.zip_meta.bytes if shard.zip_meta else 0)
        largest[stream] = max(largest[stream], peak)
    whole = sum(totals) or 1
    at_once = _window_shards_at_once(window)
    minimum = 0
    for stream, source in enumerate(table.sources):
        if source.remote is None:
            continue  # a local dataset is never evicted: no limit applies to it
        try:
            index_bytes = os.stat(source.local / "index.json").st_size
        except FileNotFoundError:
            index_bytes = 0
        need = index_bytes + _RECORD_BYTES
        need += max(1, consumers) * at_once * (largest[stream] + _STAMP_BYTES)
        minimum = max(minimum, -(-need * whole // max(totals[stream], 1)))
    return minimum


def _release_fetcher(loop: IOLoop, fetcher: Fetcher) -> None:
    """A dataset's runtime was collected or closed: let the IO loop forget its fetcher and close
    the fetcher's stores on the loop (so a dataset dropped by its user is collected whole)."""
    loop.remove_closer(fetcher.aclose)
    if not loop.closed and loop.pid == os.getpid():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.submit(fetcher.aclose())


def _while_using(runtime: _Runtime, samples: Iterator[Sample]) -> Iterator[Sample]:
    """``samples``, with ``runtime`` held open from the first sample until the iterator ends."""
    with runtime.using():
        yield from samples


class _Runtime:
    """One process's engine state for a dataset: never pickled, rebuilt after a fork."""

    def __init__(self, dataset: StreamingDataset) -> None:
        self.pid = os.getpid()
        self.counters, self.caches = dataset._process_state()
        self.loop = io_loop()
        self.fetcher = Fetcher(
            dataset.table,
            self.caches,
            self.counters,
            max_downloads=dataset.window.max_downloads,
            allow_unsafe_types=dataset.allow_unsafe_types,
        )
        self.loop.add_closer(self.fetcher.aclose)
        # Holds the loop and the fetcher, never this runtime or its dataset.
        self.release = weakref.finalize(self, _release_fetcher, self.loop, self.fetcher)
        self.release.atexit = False  # at exit the loop's own shutdown closes the fetcher
        keep_open, _ = consumer_limits(
            dataset.table, dataset.window, self.caches, dataset.cache_limit
        )
        self.pool = ReaderPool(
            dataset.table, self.caches, min(16, keep_open), dataset.allow_unsafe_types
        )
        self.pool_lock = threading.Lock()
        # Iterators and reads under way: close() while one runs releases the fetcher (and the
        # stores it may open again meanwhile) when the last one ends, not under it.
        self._users = 0
        self._closing = False
        self._users_lock = threading.Lock()

    @contextlib.contextmanager
    def using(self) -> Iterator[_Runtime]:
        """Hold the runtime open for the block (an iterator's life, a read)."""
        with self._users_lock:
            self._users += 1
        try:
            yield self
        finally:
            with self._users_lock:
                self._users -= 1
                done = self._closing and self._users == 0
            if done:
                self._release()

    def close(self) -> None:
        """Close the open readers now, and the fetcher's stores once nothing uses them."""
        with self.pool_lock:
            self.pool.close()
        with self._users_lock:
            self._closing = True
            done = self._users == 0
        if done:
            self._release()

    def _release(self) -> None:
        if self.release.alive:
            self.release()
        else:  # released before, and used since (stores opened again): close those too
            _release_fetcher(self.loop, self.fetcher)


class StreamingDataset(_Base):  # type: ignore[type-arg]
    """Stream samples from one or more datasets, in a deterministic, elastic, resumable order.

    Takes mosaicml-streaming's keyword arguments, so switching is an import change. Iterate it
    (sync, in or out of DataLoader workers), ``async for`` it on your own loop, or index it
    (``dataset[i]``, slices, lists and arrays of ids) to fetch only the bytes those samples need.

    Built outside an event loop, the constructor loads each stream's index (and runs the checks
    that need it). Built inside a running loop (asyncio, or trio), it does no network I/O: the
    index loads on first use, in a worker thread for ``async for`` and :meth:`load`
    (``await dataset.load()``), synchronously for a sync accessor that needs it first
    (``len()``, :attr:`size`, :attr:`table`, ``dataset[i]``, :meth:`state_dict`, ``for``).
    ``async for`` never blocks the loop: see :meth:`__aiter__`.

    :param streams: the streams to mix; or give ``remote``/``local``/``split`` for one stream.
    :param remote: where the dataset lives (path or URL), for a single stream.
    :param local: the node-local cache directory (``None``: one under the system temp dir keyed
        by ``remote``); without ``remote``, the dataset itself, only ever read (compressed
        shards are decompressed into ``<temp dir>/astream/local-<digest>``).
    :param split: a sub-directory of ``remote`` and ``local``.
    :param download_retry: retries of a failed request (default 2).
    :param download_timeout: seconds of silence before one try of a request is abandoned
        (default 60); a body must also keep arriving at ``RetryConfig.min_rate`` (64 KiB/s) on
        average after that. A server that never answers is given up on after
        ``(download_retry + 1) * download_timeout`` seconds plus short backoffs
        (docs/storage.md, "The time budget").
    :param validate_hash: hash algorithm to check shard files against the index: each
        downloaded file before it is used, and any other file a sample is read from (a
        local-only dataset's, or one cached without the check) once per node when first
        opened, and again if it changes.
    :param keep_zip: keep compressed shard files after decompressing them.
    :param epoch_size: samples per epoch (int or ``"100k"``), with proportion or no weights.
    :param predownload: samples ahead of the consumer whose shards are fetched.
    :param cache_limit: bytes (int or ``"100gb"``) the node-local cache may hold; least recently
        used shards are evicted, never one a process is reading.
    :param sampling_method: ``"balanced"`` or ``"fixed"``.
    :param sampling_granularity: samples of a shard chosen together when sub-sampling.
    :param partition_algo: ``"relaxed"`` (default) or ``"orig"``.
    :param num_canonical_nodes: canonical nodes of the order (default from the first world).
    :param batch_size: per-device batch size; keep the global batch size fixed across resumes.
    :param shuffle: shuffle the samples.
    :param shuffle_algo: ``"py1e"`` (default), ``"py1br"``, ``"py1s"``, ``"py2s"``, ``"naive"``.
    :param shuffle_seed: the run's seed (default 9176).
    :param shuffle_block_size: the shuffle unit of ``py1br``/``py1e``.
    :param batching_method: ``"random"``, ``"stratified"``, ``"per_stream"``,
        ``"device_per_stream"``.
    :param allow_unsafe_types: allow ``pkl`` columns (they run code when decoded).
    :param prefetch_shards: shards fetched ahead of the consumer (astream's own knob).
    :param prefetch_bytes: bytes fetched ahead of the consumer (int or ``"1gb"``).
    :param max_downloads: shards one process downloads at once.
    :param cold_range_reads: read the first batch of a shuffled cold epoch by range requests,
        with the shards' downloads held back until those reads are in (default on: the first
        batch then does not wait for nearly every shard; see docs/design.md).
    """

    def __init__(
        self,
        *,
        streams: Sequence[Stream] | None = None,
        remote: str | os.PathLike[str] | None = None,
        local: str | os.PathLike[str] | None = None,
        split: str | None = None,
        download_retry: int = DEFAULT_DOWNLOAD_RETRY,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        validate_hash: str | None = None,
        keep_zip: bool = False,
        epoch_size: int | str | None = None,
        predownload: int | None = None,
        cache_limit: int | str | None = None,
        sampling_method: str = "balanced",
        sampling_granularity: int = 1,
        partition_algo: str = "relaxed",
        num_canonical_nodes: int | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        shuffle_algo: str = "py1e",
        shuffle_seed: int = 9176,
        shuffle_block_size: int | None = None,
        batching_method: str = "random",
        allow_unsafe_types: bool = False,
        replication: int | None = None,
        stream_name: str = "stream",
        stream_config: dict[str, Any] | None = None,
        prefetch_shards: int = 4,
        prefetch_bytes: int | str = "1gb",
        max_downloads: int = 4,
        cold_range_reads: bool = True,
    ) -> None:
        stream_list = self._build_streams(streams, remote, local, split, stream_name, stream_config)
        defaults = {
            "download_retry": download_retry,
            "download_timeout": download_timeout,
            "validate_hash": validate_hash,
            "keep_zip": keep_zip,
        }
        self.streams = tuple(stream_list)
        sources = [s.resolve(**defaults) for s in stream_list]
        self.cache_limit = None if cache_limit is None else parse_bytes(cache_limit)
        self.allow_unsafe_types = allow_unsafe_types
        self.batch_size = batch_size
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (or None), got {batch_size}")
        for name, value in (("prefetch_shards", prefetch_shards), ("max_downloads", max_downloads)):
            if value < 1:  # named here as the caller spelled them, not as WindowConfig does
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if predownload is not None and predownload < 0:
            raise ConfigError(f"predownload must be >= 0, got {predownload}")
        self.replication = _check_replication(replication)
        self.predownload = predownload if predownload is not None else 8 * (batch_size or 8)
        self.window = WindowConfig(
            shards=prefetch_shards,
            bytes=parse_bytes(prefetch_bytes),
            samples=predownload if predownload is not None else 8 * (batch_size or 1),
            max_downloads=max_downloads,
            range_reads=cold_range_reads,
        )
        self._sources = sources
        self._splits = [s.split for s in stream_list]
        self._order_args: dict[str, Any] = {
            "epoch_size": epoch_size,
            "sampling_method": sampling_method,
            "sampling_granularity": sampling_granularity,
            "partition_algo": partition_algo,
            "num_canonical_nodes": num_canonical_nodes,
            "batch_size": batch_size,
            "shuffle": shuffle,
            "shuffle_algo": shuffle_algo,
            "shuffle_seed": shuffle_seed,
            "shuffle_block_size": shuffle_block_size,
            "batching_method": batching_method,
        }
        self._table: ShardTable | None = None
        self._config: OrderConfig | None = None
        self._plan: EpochPlan | None = None
        self._next_epoch = 0
        self._resume: PlanState | None = None
        self._resumed_from: PlanState | None = None  # the plan's, kept past the resume
        # (epoch, first sample) an epoch was started at, by __iter__ or by a StreamingDataLoader
        # in the main process (``_claimed``, handed to its workers by pickling).
        self._epoch_start: tuple[int, int] | None = None
        self._claimed: tuple[int, int] | None = None
        self._runtime: _Runtime | None = None
        self._proc_state: tuple[int, Counters, list[ShardCache]] | None = None
        if not _in_event_loop():
            self._load()

    # -- the index: loaded at construction, or on first use inside an event loop ----------

    def _load(self) -> None:
        """Load the indexes, build the order and run the construction checks (blocking; once)."""
        with _LOAD_LOCK:
            if self._table is not None:
                return
            sources = self._sources
            table = ShardTable(sources, _run_blocking(_load_indexes(sources, self._splits)))
            weights = []
            for index, stream in enumerate(self.streams):
                # Empty shards stay in: the shard shuffles draw them, as mosaicml-streaming's do.
                sizes = table.stream_shard_sizes(index)
                if not any(sizes):
                    where = sources[index].remote or sources[index].local
                    raise EmptyDatasetError(f"stream {index} ({where}) has no samples")
                proportion, repeat, choose = stream.given_weights
                weights.append(
                    StreamWeighting(
                        shard_sizes=sizes, proportion=proportion, repeat=repeat, choose=choose
                    )
                )
            config = OrderConfig(streams=tuple(weights), **self._order_args)
            plan = EpochPlan(config)
            if self._resumed_from is not None:
                plan = plan.resumed(self._resumed_from)
            self._config, self._plan, self._table = config, plan, table
            self._check_at_construction()
            if self._order_args["shuffle"] and self.cache_limit is not None:
                self._check_cache_plan(self.cache_limit)

    async def load(self) -> StreamingDataset:
        """Load the streams' indexes now, in a worker thread: ``await dataset.load()``.

        Inside a running event loop (asyncio or trio) the constructor does not download the
        indexes, so that it never blocks the loop: ``async for`` loads them in a worker thread
        by itself, and so does this method. A synchronous accessor that needs them first
        (``len()``, :attr:`size`, :attr:`table`, :attr:`plan`, ``dataset[i]``,
        :meth:`state_dict`, ``for``) loads them synchronously, blocking the loop meanwhile.
        Outside a loop the constructor has loaded them already and this returns at once.

        :returns: the dataset itself.
        """
        if self._table is None:
            await anyio.to_thread.run_sync(self._load)
        return self

    @property
    def table(self) -> ShardTable:
        """Every shard of every stream (loads the indexes if not yet loaded, see :meth:`load`)."""
        if self._table is None:
            self._load()
        assert self._table is not None
        return self._table

    @property
    def plan(self) -> EpochPlan:
        """The sample order (loads the indexes if not yet loaded, see :meth:`load`)."""
        if self._plan is None:
            self._load()
        assert self._plan is not None
        return self._plan

    def _check_cache_plan(self, cache_limit: int) -> None:
        """Warn when the shuffle's working set per node cannot fit ``cache_limit``."""
        if all(source.remote is None for source in self.table.sources):
            return
        assert self._config is not None  # loaded with the table
        found = check_cache_plan(
            self.table,
            self._config,
            detect_world(),
            cache_limit=cache_limit,
            window_bytes=self.window.bytes,
            window_shards=self.window.shards,
        )
        if not found.fits:
            warn_at_caller(found.message, CacheLimitWarning)

    # -- construction: streams, checks and warnings as mosaicml-streaming makes them --------

    @staticmethod
    def _build_streams(
        streams: Sequence[Stream] | None,
        remote: str | os.PathLike[str] | None,
        local: str | os.PathLike[str] | None,
        split: str | None,
        stream_name: str,
        stream_config: dict[str, Any] | None,
    ) -> list[Stream]:
        """The dataset's streams: those given (with the dataset's ``split`` where they have
        none), or one built by ``streams_registry[stream_name]`` from ``remote``/``local``."""
        if streams:
            if remote is not None or local is not None:
                raise ConfigError("give either streams or remote/local, not both")
            stream_list = list(streams)
            if any(not isinstance(s, Stream) for s in stream_list):
                raise ConfigError("streams must be astream.Stream objects")
            for stream in stream_list:
                if split and not stream.split:
                    stream.split = split
            return stream_list
        if remote is None and local is None:
            raise ConfigError("StreamingDataset needs remote, local or streams")
        config = dict(stream_config or {})
        config.update(remote=remote, local=local, split=split)
        stream = streams_registry.get(stream_name)(**config)
        if not isinstance(stream, Stream):
            raise ConfigError(
                f"streams_registry[{stream_name!r}] made a {type(stream).__name__}, "
                "not an astream.Stream"
            )
        return [stream]

    def _check_at_construction(self) -> None:
        weights = self.plan.weights
        for index, stream in enumerate(self.streams):
            choose = int(weights.choose[index])
            samples = sum(self.table.stream_shard_sizes(index))  # > 0: checked above
            stream.set_resolved_weights(float(weights.proportion[index]), choose / samples, choose)
        if not self.allow_unsafe_types:
            self._check_unsafe_columns()
        if self.cache_limit is not None:
            minimum = cache_limit_minimum(self.table, self.window)
            if self.cache_limit < minimum:
                raise CacheLimitError(
                    f"cache_limit={self.cache_limit} bytes cannot hold each stream's index.json "
                    f"and the {_window_shards_at_once(self.window)} shards one worker needs at "
                    f"once (the one it reads and prefetch_shards ahead): the minimum is "
                    f"{minimum} bytes. Raise cache_limit (or lower prefetch_shards)"
                )
        self._warn_like_reference()

    def _check_unsafe_columns(self) -> None:
        """Refuse ``pkl`` columns now, not at the first sample (as mosaicml-streaming does)."""
        seen: set[str] = set()
        for shard in self.table.shards:
            if shard.format != "mds":
                continue
            for name, spec in zip(shard.column_names, shard.column_encodings, strict=False):
                if spec in seen:
                    continue
                seen.add(spec)
                try:
                    safe = get_encoding(spec).safe
                except Exception:
                    continue  # an unknown encoding: named when its shard is opened
                if not safe:
                    raise UnsafeTypeError(
                        f"column {name!r} uses the unsafe encoding {spec!r} (reading it can run "
                        "code); pass allow_unsafe_types=True if you trust this dataset"
                    )

    def _warn_like_reference(self) -> None:
        """mosaicml-streaming's warnings about settings that work but read slowly or poorly."""
        config = self.plan.config
        if config.batch_size is not None and self.predownload < config.batch_size:
            warn_at_caller(
                f"predownload < batch_size ({self.predownload} < {config.batch_size}): each "
                "batch may wait for its shards; set predownload to at least batch_size",
                UserWarning,
            )
        if config.shuffle and config.shuffle_algo == "py1e":
            try:
                world = self._world()
            except WorldError:
                world = World()  # raised again, with its reason, when iterating
            block = self.plan.resolved_shuffle_block_size(world)
            largest = max(shard.samples for shard in self.table.shards)
            if largest > block:
                warn_at_caller(
                    f"shuffle_block_size={block} is smaller than the largest shard "
                    f"({largest} samples): such shards are not shuffled with other shards. Set "
                    "shuffle_block_size to a larger value for a better shuffle",
                    UserWarning,
                )

    def _world(self) -> World:
        """This process's world as the order sees it: ``replication`` consecutive ranks share
        one place (mosaicml-streaming's sequence-parallel replication)."""
        world = detect_world()
        if self.replication is None:
            return world
        return world.replicate(self.replication)

    # -- pickling: the runtime stays in its process ------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        self._load()  # workers get the index with the dataset rather than each loading it
        state = dict(self.__dict__)
        state["_runtime"] = None
        state["_proc_state"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _process_state(self) -> tuple[Counters, list[ShardCache]]:
        """This process's counters and caches, shared by sync and async iteration."""
        state = self._proc_state
        if state is None or state[0] != os.getpid():
            counters = Counters(dataset_bytes=remote_bytes(self.table))
            state = (os.getpid(), counters, make_caches(self.table, self.cache_limit))
            self._proc_state = state
        return state[1], state[2]

    def _rt(self) -> _Runtime:
        runtime = self._runtime
        if runtime is None or runtime.pid != os.getpid() or runtime.loop.closed:
            runtime = self._runtime = _Runtime(self)
        return runtime

    # -- sizes ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Samples in the dataset (every stream, each once): the range of ``dataset[i]``."""
        return self.table.num_samples

    @property
    def num_samples(self) -> int:
        """Alias of :attr:`size`."""
        return self.table.num_samples

    @property
    def epoch_size(self) -> int:
        """Samples per epoch after stream weighting, over all ranks."""
        return self.plan.epoch_size

    @property
    def num_shards(self) -> int:
        """Shards over every stream."""
        return len(self.table.shards)

    def __len__(self) -> int:
        """Samples one rank sees per epoch: ``ceil(epoch_size / world_size)``."""
        return math.ceil(self.epoch_size / self._world().world_size)

    # -- epochs and state -------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run ``epoch`` (from its start, unless resuming into it)."""
        if epoch < 0:
            raise PlanError(f"epoch must be >= 0, got {epoch}")
        self._next_epoch = epoch
        self._claimed = None

    def _claim_epoch(self) -> tuple[int, int]:
        epoch, start = self._next_epoch, 0
        if self._resume is not None and self._resume.epoch >= epoch:
            epoch, start = self._resume.epoch, self._resume.sample_in_epoch
            self._resume = None
        self._next_epoch = epoch + 1
        self._epoch_start = (epoch, start)
        return epoch, start

    def _begin_epoch(self) -> tuple[int, int]:
        """The epoch an iteration runs: handed down by the loader, else the next one."""
        if self._claimed is not None:
            claimed, self._claimed = self._claimed, None
            self._next_epoch = claimed[0] + 1
            self._epoch_start = claimed
            return claimed
        return self._claim_epoch()

    def state_dict(self, num_samples: int = 0, from_beginning: bool = True) -> dict[str, Any]:
        """The run's position: resume from it with :meth:`load_state_dict`.

        :param num_samples: samples of the current epoch consumed over all ranks, counted from
            the epoch's start (``from_beginning=True``) or from where this run resumed it
            (``from_beginning=False``, as :class:`~astream.StreamingDataLoader` counts).
        :param from_beginning: how ``num_samples`` is counted.
        """
        world = self._world()
        if self._epoch_start is not None:
            epoch, offset = self._epoch_start
        elif self._resume is not None:
            epoch, offset = self._resume.epoch, self._resume.sample_in_epoch
        else:
            epoch, offset = self._next_epoch, 0
        sample_in_epoch = num_samples if from_beginning else offset + num_samples
        return self.plan.state_dict(epoch, sample_in_epoch, world)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume from a state dict of :meth:`state_dict` (or of mosaicml-streaming).

        The next iteration starts at the saved epoch's ``sample_in_epoch``, with the saved run's
        canonical node count, seed and first world, so the remaining samples are exactly those
        the interrupted run would have seen, whatever the world is now. A state dict of an
        earlier epoch than this process has reached rolls the run back to it (mosaicml-streaming
        ignores such a state and runs its next epoch). One saved before the first batch
        (mosaicml-streaming writes ``epoch: -1`` then) starts the run from its beginning.
        """
        if isinstance(obj, dict) and obj.get("epoch") == -1:
            # Nothing was consumed: mosaicml-streaming ignores the state (seed and canonical
            # nodes included) and starts at epoch 0.
            self._resume = self._resumed_from = None
            if self._config is not None:
                self._plan = EpochPlan(self._config)
            self._next_epoch = 0
            self._epoch_start = None
            self._claimed = None
            return
        state = EpochPlan.parse_state(obj)
        self._resume = self._resumed_from = state
        if self._config is not None:
            self._plan = EpochPlan(self._config).resumed(state)
        self._next_epoch = state.epoch
        self._epoch_start = None
        self._claimed = None

    # -- iteration --------------------------------------------------------------------------

    def worker_sample_ids(self, world: World, epoch: int, sample_in_epoch: int) -> NDArray[Any]:
        """The ids a worker of ``world`` yields in ``epoch`` from ``sample_in_epoch`` (-1: pad)."""
        if sample_in_epoch >= self.epoch_size:
            return np.zeros(0, dtype=np.int64)
        return self.plan.worker_ids(world, epoch, sample_in_epoch)

    def __iter__(self) -> Iterator[Sample]:
        """This worker's samples of the next epoch (or of the resumed one), in order."""
        world = self._world()
        epoch, start = self._begin_epoch()
        ids = self.worker_sample_ids(world, epoch, start)
        return self.iter_ids(ids)

    def iter_ids(self, ids: Sequence[int] | NDArray[Any]) -> Iterator[Sample]:
        """Samples ``ids`` in the given order, fetched ahead on the IO loop thread."""
        runtime = self._rt()
        return _while_using(
            runtime,
            iter_samples(
                ids,
                table=self.table,
                fetcher=runtime.fetcher,
                loop=runtime.loop,
                caches=runtime.caches,
                counters=runtime.counters,
                window=self.window,
                allow_unsafe_types=self.allow_unsafe_types,
                cache_share=self._cache_share(),
                consumers=self._consumers(),
            ),
        )

    def _consumers(self) -> int:
        """Processes of this node that iterate at once (ranks x DataLoader workers)."""
        world = detect_world()
        return world.ranks_per_node * world.workers_per_rank

    def _cache_share(self) -> int | None:
        """Bytes of ``cache_limit`` one consumer of this node may fill (ranks x workers share
        it), or ``None`` when nothing is evictable."""
        if self.cache_limit is None or all(s.remote is None for s in self._sources):
            return None
        return self.cache_limit // self._consumers()

    def __aiter__(self) -> AsyncIterator[Sample]:
        """``async for``: this process's samples of the next epoch, never blocking the loop.

        Runs the same iterator as ``for`` in worker threads (``anyio.to_thread``), on asyncio
        or trio, handing samples over in batches: loading the index (when the dataset was built
        inside the loop), planning the epoch, waiting for shards, opening and decoding them
        all happen off the caller's loop. The epoch is claimed at the first ``__anext__``.
        """
        return aiterate(self.__iter__)

    def statistics(self) -> EngineStatistics:
        """A frozen snapshot of this process's engine counters for this dataset."""
        return self._process_state()[0].snapshot()

    # -- random access ----------------------------------------------------------------------

    def _normalise(self, key: Any) -> list[int]:
        return sample_keys(key, self.size)

    def __getitem__(self, key: Any) -> Any:
        """One sample (int, negative counts from the end) or a list (slice, list, ndarray).

        A sample whose shard is on local disk is read from it; otherwise an uncompressed shard
        is range-read (its offsets once, then only the sample's bytes) and a compressed one is
        fetched whole into the cache.
        """
        ids = self._normalise(key)
        samples = self.get_items(ids)
        if isinstance(key, int | np.integer):
            return samples[0]
        return samples

    def get_item(self, sample_id: int) -> Sample:
        """One sample by global id (mosaicml-streaming's name for ``dataset[i]``)."""
        result: Sample = self[sample_id]
        return result

    def get_items(self, ids: Sequence[int]) -> list[Sample]:
        """Samples by global id, fetched concurrently where not local.

        With ``validate_hash`` no sample is range-read: its shard is fetched whole and checked
        first, as for iteration.
        """
        with self._rt().using() as runtime:
            return self._get_items(runtime, ids)

    def _get_items(self, runtime: _Runtime, ids: Sequence[int]) -> list[Sample]:
        out: list[Sample | None] = [None] * len(ids)
        remote: list[tuple[int, int, int]] = []
        with runtime.pool_lock:
            for slot, sample_id in enumerate(ids):
                shard, index = self.table.locate_one(sample_id)
                reader = runtime.pool.get(shard)
                if reader is not None:
                    out[slot] = reader[index]
                else:
                    remote.append((slot, shard, index))
        if remote:
            fetched = runtime.loop.run(self._fetch_items(runtime.fetcher, remote))
            whole: list[tuple[int, int, int]] = []
            for (slot, shard, index), sample in zip(remote, fetched, strict=True):
                if sample is None:
                    whole.append((slot, shard, index))
                out[slot] = sample
            # Shards fetched whole are opened here, in the caller's thread (pins may block).
            with runtime.pool_lock:
                for slot, shard, index in whole:
                    reader = runtime.pool.get(shard)
                    if reader is None:
                        raise evicted_error(self.table, shard)
                    out[slot] = reader[index]
        runtime.counters.add("samples", len(ids))
        return [s for s in out if s is not None]

    @staticmethod
    async def _fetch_items(
        fetcher: Fetcher, wanted: list[tuple[int, int, int]]
    ) -> list[Sample | None]:
        """Range-read what can be; fetch the other shards whole (``None`` for their samples)."""

        async def one(shard: int, index: int) -> Sample | None:
            sample = await fetcher.read_sample(shard, index)
            if sample is None:
                await fetcher.fetch_shard(shard)
            return sample

        return list(await asyncio.gather(*(one(shard, index) for _, shard, index in wanted)))

    # -- mosaicml-streaming's shard and cache surface ---------------------------------------

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """Every stream's shards in global order: index records (``samples``, ``raw``, ``zip``,
        ``compression``, columns), not readers; read samples with ``dataset[i]``."""
        return self.table.shards

    @property
    def num_streams(self) -> int:
        """Streams in the mix."""
        return len(self.streams)

    @property
    def shards_per_stream(self) -> NDArray[np.int64]:
        """Shards of each stream."""
        first = self.table.stream_first_shard
        return np.asarray([b - a for a, b in itertools.pairwise(first)], np.int64)

    @property
    def shard_offset_per_stream(self) -> NDArray[np.int64]:
        """Global number of each stream's first shard."""
        return np.asarray(self.table.stream_first_shard[:-1], np.int64)

    @property
    def samples_per_shard(self) -> NDArray[np.int64]:
        """Samples in each shard."""
        return np.asarray([shard.samples for shard in self.table.shards], np.int64)

    @property
    def sample_offset_per_shard(self) -> NDArray[np.int64]:
        """Global id of each shard's first sample."""
        return np.asarray(self.table.sample_offsets[:-1], np.int64)

    @property
    def stream_per_shard(self) -> NDArray[np.int64]:
        """The stream of each shard."""
        return np.asarray(self.table.shard_stream, np.int64)

    @property
    def samples_per_stream(self) -> NDArray[np.int64]:
        """Samples in each stream (each once)."""
        sizes = [sum(self.table.stream_shard_sizes(k)) for k in range(self.num_streams)]
        return np.asarray(sizes, np.int64)

    def _check_shard(self, shard_id: int) -> int:
        if isinstance(shard_id, bool) or not isinstance(shard_id, int | np.integer):
            raise TypeError(f"shard ids are ints, got {shard_id!r}")
        if not 0 <= shard_id < self.num_shards:
            raise IndexError(f"shard {shard_id} out of range for {self.num_shards} shards")
        return int(shard_id)

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Bring shard ``shard_id`` into the local cache (downloaded at most once per node),
        evicting least recently used shards first when ``cache_limit`` requires it.

        :param blocking: wait until the shard is local; ``False`` starts the download on the IO
            loop thread and returns at once.
        """
        shard = self._check_shard(shard_id)
        runtime = self._rt()
        if blocking:
            with runtime.using():
                runtime.loop.run(runtime.fetcher.fetch_shard(shard))
        else:
            runtime.loop.submit(runtime.fetcher.fetch_shard(shard))

    def evict_shard(self, shard_id: int) -> None:
        """Delete shard ``shard_id``'s files from the local cache now.

        :raises CacheError: another process is reading or downloading the shard, or its stream
            has no remote (its directory is the dataset itself).
        """
        shard = self._check_shard(shard_id)
        self.close()  # this process's own readers pin shards
        self._process_state()[1][int(self.table.shard_stream[shard])].evict_one(
            self.table.shards[shard]
        )

    def evict_coldest_shard(self) -> None:
        """Evict the least recently used shard on local disk that no process is using.

        :raises CacheLimitError: no shard can be evicted (none is local, or all are in use);
            a ``ValueError``, as mosaicml-streaming raises.
        """
        self.close()
        caches = self._process_state()[1]
        candidates = [
            (coldest, index)
            for index, cache in enumerate(caches)
            if cache.evictable and (coldest := cache.coldest()) is not None
        ]
        for _, index in sorted(candidates):
            if caches[index].evict_coldest():
                return
        raise CacheLimitError(
            "no shard to evict: none is on local disk, or every one is in use "
            "(cache_limit may be too low)"
        )

    @property
    def cache_usage(self) -> int:
        """Bytes every stream's local directory holds now: shards, indexes and astream's own
        files (what ``cache_limit`` bounds)."""
        return sum(folder_bytes(cache.root) for cache in self._process_state()[1])

    def resample_streams(
        self, epoch: int, stream_id: int | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The weighted epoch before shuffling, as mosaicml-streaming's ``resample_streams``.

        :param epoch: the epoch (seeds the sampling of fractional repeats).
        :param stream_id: one stream only; ``None`` for every stream.
        :returns: ``(shuffle_units, sample_ids)``: the size of each shuffle unit (a whole copy of
            a shard or a sampled part of it), and the sample ids they hold, in order.
        """
        if stream_id is None:
            streams = list(range(self.num_streams))
        elif not 0 <= stream_id < self.num_streams:
            raise IndexError(f"stream {stream_id} out of range for {self.num_streams} streams")
        else:
            streams = [stream_id]
        laid = resample(self.plan.config, self.plan.weights, streams, epoch)
        ids = laid.to_sample_ids(np.arange(laid.size, dtype=np.int64))
        units: NDArray[np.int64] = laid.unit_sizes.astype(np.int64)
        return units, ids

    def close(self) -> None:
        """Close this process's open shard readers and its stores (on the IO loop).

        The dataset stays usable: its next use opens what it needs again. A dataset dropped
        without ``close()`` is released the same way when it is garbage collected.
        """
        runtime, self._runtime = self._runtime, None
        if runtime is not None and runtime.pid == os.getpid():
            runtime.close()

    def __repr__(self) -> str:
        return (
            f"StreamingDataset(streams={len(self.streams)}, samples={self.size}, "
            f"shards={self.num_shards})"
        )
