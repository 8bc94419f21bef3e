"""``astream merge OUT [PARTS...]``: one index over datasets written in parts under ``OUT``."""

from __future__ import annotations

import argparse
import os
import posixpath

from astream.cli.output import print_json, print_table
from astream.format import INDEX_BASENAME
from astream.merge import merge_index

__all__ = ["run_merge"]


def _index_file(out: str, part: str) -> str:
    """A part's index file: PART itself when it names one, else PART/index.json; a relative
    PART lies under OUT."""
    if "://" not in part and not os.path.isabs(part):
        part = f"{out.rstrip('/')}/{part}"
    if posixpath.basename(part.rstrip("/")) == INDEX_BASENAME:
        return part
    return f"{part.rstrip('/')}/{INDEX_BASENAME}"


def run_merge(args: argparse.Namespace) -> int:
    """``astream merge OUT [PARTS...]``."""
    parts = [_index_file(args.out, part) for part in args.parts] or None
    index = merge_index(args.out, parts)
    facts = {
        "url": args.out,
        "index": f"{args.out.rstrip('/')}/{INDEX_BASENAME}",
        "samples": index.samples,
        "shards": len(index.shards),
    }
    if args.json:
        print_json(facts)
        return 0
    print_table(
        [
            ("wrote", facts["index"]),
            ("samples", f"{index.samples:,}"),
            ("shards", f"{len(index.shards):,}"),
        ]
    )
    return 0
