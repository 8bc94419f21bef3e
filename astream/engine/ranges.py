"""Samples a consumer needs before their shards are local, read by range requests ahead of it.

A shuffled epoch's first batch touches nearly every shard. Waiting for those shards means
waiting for nearly the whole dataset; reading each of those samples by two small range requests
(the shard's offsets once, then the sample's bytes: :meth:`Fetcher.read_payload`) costs a
request each, and they run concurrently (:data:`~astream.engine.fetch.RANGE_READS` at once).
:class:`RangeAhead` requests such reads for the first :data:`RANGE_BUDGET` positions of an
iteration whose shards are not local. The reads of the first :data:`RANGE_LEADING` positions
(the first batch) form a lane of their own: the iteration's whole-shard downloads are held back
(:meth:`Fetcher.hold`) until every one of those reads is in (at most ``LEAD_WAIT``), so that
the first batch does not share the server and the link with every shard of the window; the
window then downloads whole shards in need order. Samples of shards that another process of
the node is downloading come by range too, instead of waiting on that shard's lock.

A timeline of a cold shuffled first batch (``benchmarks/cold_timeline.py``, s3rver on
loopback, 7 shards of 64 MiB) shows why: with every shard downloading at once the first batch
waits for about 1.1 s (nearly all 400 MB), and range reads issued beside those downloads queue
behind them at the server (0.2 s each); held back, 7 offsets reads and 256 sample reads take
about 0.3 s, bound by the server's requests per second.

Past the cold start, range reads would only compete with the shards' downloads (a request per
sample, where a shard pays one per many samples), so each iteration spends a fixed budget, and
stops sooner where they do not pay: it starts with :data:`RANGE_START` reads in flight and
stops (for the fetcher's later iterations too) if they come slower than
:data:`RANGE_MIN_RATE`, or if, with every read of the lane in flight, the lane's first
:data:`RANGE_LANE_JUDGE` samples come slower than :data:`RANGE_LANE_MIN_RATE`; after
:data:`RANGE_JUDGE_AFTER`, whenever the reads left would take longer than the bytes of the
shards they stand in for at the rate shards are landing.

Never for compressed shards (no sample offsets in the file) nor with ``validate_hash`` (a range
cannot be checked against the file's hash; no unverified byte reaches the consumer): the
fetcher's :meth:`~astream.engine.fetch.Fetcher.can_range_read` decides.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from astream.engine.fetch import LEAD_WAIT, Counters, Fetcher
from astream.engine.loop import IOLoop
from astream.engine.table import ShardTable
from astream.errors import StorageError
from astream.format import decode_sample

__all__ = [
    "RANGE_AHEAD",
    "RANGE_BUDGET",
    "RANGE_LANE_JUDGE",
    "RANGE_LANE_MIN_RATE",
    "RANGE_LEADING",
    "RANGE_MIN_RATE",
    "RANGE_START",
    "RANGE_WAIT",
    "RangeAhead",
]

#: Positions ahead of the consumer whose samples may be requested by range reads (a bound on
#: the requests queued, and on the bytes fetched twice: once by range, once in the shard).
RANGE_AHEAD = 256
#: Positions, from an iteration's start, that may be served by range reads at all. Range reads
#: win only while whole shards are far from landing (they cost a request per sample, which the
#: shards pay once per many samples): past the cold start they would compete with the shards'
#: downloads for the server and the link, so each iteration spends at most this many.
RANGE_BUDGET = 256
#: Range samples taken before :class:`RangeAhead` first compares its rate with the shards'.
RANGE_JUDGE_AFTER = 16
#: Positions, from an iteration's start, whose reads hold the iteration's whole-shard downloads
#: back until they are all in (at most ``LEAD_WAIT``): the first batch (the engine bench's and
#: a DataLoader's usual 256) then does not share the server and the link with every shard.
RANGE_LEADING = 256
#: Reads an iteration starts with, before it knows the store serves them fast enough.
RANGE_START = 2
#: Range samples per second, over the first :data:`RANGE_START`, below which an iteration stops
#: its range reads, and the fetcher's later iterations do not start any: a server that copies
#: the whole object for every ranged GET (moto: about 8 reads/s on 64 MiB objects) serves a
#: sample no sooner than a whole shard.
RANGE_MIN_RATE = 20.0
#: Samples the lane takes with every read in flight before it compares the rate of its reads
#: with :data:`RANGE_LANE_MIN_RATE`.
RANGE_LANE_JUDGE = 32
#: Lane sample reads completed per second (from the probe's end to the
#: :data:`RANGE_LANE_JUDGE`-th sample after it) below which the lane stops, its downloads go,
#: and the fetcher's later iterations read whole shards. Measured on loopback (3 runs each,
#: loaded 2-core machine): s3rver 260-440/s, where the lane brings the first batch 2.5x
#: sooner than whole shards (0.4-0.6 s against 1.0-1.5 s); moto, which copies the whole object
#: for every ranged GET, 90-130/s on 4 MiB objects, where whole shards bring it sooner (1.2 s
#: against 1.6-1.8 s with the whole lane).
RANGE_LANE_MIN_RATE = 200.0

#: Longest wait (seconds) of the consumer for one range read: past it the sample comes from its
#: shard (whose download a lane holds back no longer than ``LEAD_WAIT`` anyway).
RANGE_WAIT = LEAD_WAIT

Sample = dict[str, Any]


class RangeAhead:
    """Range reads of the samples ahead of one consumer whose shards are not local yet.

    Driven from the consumer's thread, in position order: :meth:`advance` at each position
    (amortised O(1): a pointer that only moves forward) keeps up to ``ahead`` positions
    requested; :meth:`take` hands over a requested sample (waiting for its read) or ``None``.

    :param shard_of: the shard of each position; ``within``: the sample's index in it.
    :param local: whether a shard is (or will shortly be) readable locally; such positions are
        not requested. Called at most once per position.
    :param budget: positions from the start that may be requested at all (the cold start).
    :param spread: range reads are used only when the first ``ahead`` positions span more than
        this many shards, in more than two runs per shard on average (a shuffle).
    :param consumers: processes of the node iterating at once, each with a lane of its own on
        the same store: the lane's rate rule (:data:`RANGE_LANE_MIN_RATE`) counts their reads
        together (this process's rate times ``consumers``).
    """

    def __init__(
        self,
        *,
        table: ShardTable,
        fetcher: Fetcher,
        loop: IOLoop,
        counters: Counters,
        shard_of: NDArray[np.int64],
        within: NDArray[np.int64],
        local: Callable[[int], bool],
        ahead: int | None = None,
        budget: int | None = None,
        spread: int = 2,
        allow_unsafe_types: bool = False,
        consumers: int = 1,
    ) -> None:
        self.table = table
        self.fetcher = fetcher
        self.loop = loop
        self.counters = counters
        self.shard_of = shard_of
        self.within = within
        self.local = local
        self.ahead = RANGE_AHEAD if ahead is None else ahead
        self.budget = min(len(shard_of), RANGE_BUDGET if budget is None else budget)
        self.allow_unsafe_types = allow_unsafe_types
        self.consumers = max(1, consumers)
        self._next = 0  # the next position to consider
        self._pending: dict[int, concurrent.futures.Future[bytes | None]] = {}
        self._order: collections.deque[int] = collections.deque()
        # Shards that cannot be range-read (checked once each).
        self._unreadable: set[int] = set()
        # The lead lane: reads of positions before _lead_end hold the fetcher's downloads back
        # until all were requested (_lead_requested) and none is still out (_lead_out).
        self._lead_end = min(RANGE_LEADING, self.budget)
        self._lead_out = 0
        self._lead_reads = 0  # requested so far (those in are _lead_reads - _lead_out)
        self._done_at_open = 0
        self._lead_requested = False
        self._holding = False
        self._lead_lock = threading.Lock()
        # For the comparison with whole shards: when the first read was requested, the bytes
        # downloads had landed then, the bytes of the shards the reads stand in for, and the
        # samples taken from reads so far.
        self._began = 0.0
        self._landed_before = 0
        self._shards_asked: set[int] = set()
        self._bytes_asked = 0
        self._taken = 0
        # Reads in flight at most: RANGE_START until the first ones came fast enough (at
        # _opened: the lane's rate is measured from there).
        self._allowed = RANGE_START
        self._opened = 0.0
        # Only where whole shards cannot serve the first samples soon: when the first stretch
        # of positions jumps between shards (a shuffle: many more runs than shards). A
        # sequential order reads each shard in one run and gets its first samples as the
        # shard's first bytes land.
        stretch = shard_of[: self.ahead]
        first = np.unique(stretch)
        runs = 1 + int(np.count_nonzero(stretch[1:] != stretch[:-1])) if len(stretch) else 0
        self.active = (
            not fetcher.range_slow
            and len(first) > spread
            and runs > 2 * len(first)
            and any(fetcher.can_range_read(int(shard)) for shard in first)
        )
        #: The position at which :meth:`advance` has work again: the requested stretch is
        #: topped up when a quarter of it was consumed, so the driver pays one compare per
        #: sample in between.
        self.next_event = 0 if self.active else 1 << 62
        if self.active and self._lead_end:
            # Before any download of this iteration is submitted (the loop runs callbacks in
            # the order they were handed to it), so that none starts ahead of the lane.
            self._holding = True
            self._on_loop(fetcher.hold)

    def _on_loop(self, call: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.loop.call_soon_threadsafe(call)

    def _lead_done(self, _: object = None) -> None:
        """A lead read ended (or was dropped)."""
        with self._lead_lock:
            self._lead_out -= 1
        self._release_when_through()

    def _release_when_through(self) -> None:
        """Release the hold once every lead read was requested and none is still out."""
        with self._lead_lock:
            through = self._lead_requested and self._lead_out <= 0
        if through:
            self._release()

    def _release(self) -> None:
        with self._lead_lock:
            release, self._holding = self._holding, False
        if release:
            self._on_loop(self.fetcher.release)

    def _drop_before(self, pos: int) -> None:
        order, pending = self._order, self._pending
        while order and order[0] < pos:  # consumed another way (their shard came in)
            pending.pop(order.popleft()).cancel()

    def advance(self, pos: int) -> None:
        """Request reads for positions up to ``pos + ahead`` whose shards are not local."""
        if not self.active:
            self.next_event = 1 << 62
            return
        self._drop_before(pos)
        order, pending = self._order, self._pending
        end = min(pos + self.ahead, self.budget)
        p = max(self._next, pos)
        while p < end and len(pending) < self._allowed:
            shard = int(self.shard_of[p])
            if shard not in self._unreadable and not self.local(shard):
                if not self.fetcher.can_range_read(shard):
                    self._unreadable.add(shard)
                else:
                    if not self._began:
                        self._began = time.perf_counter()
                        self._landed_before = self.fetcher.landed
                    if shard not in self._shards_asked:
                        self._shards_asked.add(shard)
                        self._bytes_asked += int(self.table.fetch_bytes[shard])
                    read = self.fetcher.read_payload(shard, int(self.within[p]))
                    future = pending[p] = self.loop.submit(read)
                    order.append(p)
                    if p < self._lead_end:
                        with self._lead_lock:
                            self._lead_out += 1
                            self._lead_reads += 1
                        future.add_done_callback(self._lead_done)
            p += 1
        self._next = p
        if p >= self._lead_end and not self._lead_requested:
            with self._lead_lock:
                self._lead_requested = True
            self._release_when_through()
        if p >= self.budget:
            self.next_event = 1 << 62
        elif p < end:  # held back by _allowed: look again at the next position
            self.next_event = pos + 1
        else:
            self.next_event = pos + max(1, self.ahead // 4)

    def take(self, pos: int) -> Sample | None:
        """The sample at ``pos`` if a read was requested for it (waits for it), else ``None``.

        A read that failed, or that the fetcher declined (its stream's range reads were turned
        off meanwhile), gives ``None``: the caller reads the sample from the whole shard, whose
        download reports any lasting failure. A read not in after :data:`RANGE_WAIT` seconds (a
        stalled request, whose retries could take minutes) gives ``None`` and ends this
        iteration's range reads.
        """
        future = self._pending.get(pos)
        if future is None:
            return None
        self._drop_before(pos)
        self._order.popleft()  # pos itself: positions are requested and taken in order
        del self._pending[pos]
        began = time.perf_counter()
        try:
            payload = future.result(RANGE_WAIT)
        except TimeoutError:
            # A stalled request: this iteration's range reads stop (the held downloads go) and
            # the shards serve the samples.
            self.close()
            return None
        except (StorageError, OSError, concurrent.futures.CancelledError):
            return None
        finally:
            self.counters.add("consumer_wait_s", time.perf_counter() - began)
        if payload is None:
            return None
        self.counters.add("range_samples")
        self._taken += 1
        if self._taken == RANGE_START:
            now = time.perf_counter()
            rate = self._taken / max(now - self._began, 1e-6)
            if rate < RANGE_MIN_RATE:
                self.fetcher.range_slow = True
                self.close()
            else:
                self._allowed = self.ahead
                self._opened = now
                with self._lead_lock:
                    self._done_at_open = self._lead_reads - self._lead_out
        elif self._taken == RANGE_START + RANGE_LANE_JUDGE and self._holding:
            # Reads completed, not samples taken: the consumer takes them in order, behind
            # the first reads of each shard (its offsets).
            with self._lead_lock:
                done = self._lead_reads - self._lead_out - self._done_at_open
            rate = done / max(time.perf_counter() - self._opened, 1e-6)
            # The node's other consumers run their lanes at the same time, on the same store.
            if rate * self.consumers < RANGE_LANE_MIN_RATE:
                self.fetcher.range_slow = True
                self.close()
        elif self._taken >= RANGE_JUDGE_AFTER and self._pending:
            self._judge()
        shard = int(self.shard_of[pos])
        return decode_sample(
            self.table.shards[shard], payload, allow_unsafe_types=self.allow_unsafe_types
        )

    def _judge(self) -> None:
        """Stop when the reads left would take longer than the shards they stand in for.

        Both rates are measured over the same time, on the same machine and link: samples taken
        from reads per second, and bytes of this process's shard downloads landed per second.
        (Other processes of the node download some of those shards too, so the shards' side is
        if anything underestimated, in favour of the reads.)
        """
        elapsed = time.perf_counter() - self._began
        landed = self.fetcher.landed - self._landed_before
        if elapsed <= 0 or landed <= 0:
            return  # downloads held back or not started: nothing to compare yet
        reads_left = len(self._pending) / (self._taken / elapsed)
        shards_left = max(0, self._bytes_asked - landed) / (landed / elapsed)
        if reads_left > shards_left:
            self.close()

    def close(self) -> None:
        """Cancel the reads not taken (their results are dropped); request no more."""
        self.active = False
        self.next_event = 1 << 62
        self._release()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._order.clear()
