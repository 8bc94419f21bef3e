"""``astream convert`` and ``astream cp``: writing datasets into stores."""

from __future__ import annotations

import argparse
import sys

from astream.cli.output import format_bytes, progress
from astream.convert import WriterOptions, convert, copy_dataset, open_source
from astream.convert.copy import stored_files

__all__ = ["run_convert", "run_cp"]


def run_convert(args: argparse.Namespace) -> int:
    """``astream convert SRC DST``."""
    source = open_source(
        args.src,
        args.layout,
        class_names=args.class_names,
        text_field=args.text_field,
        seq_len=args.seq_len,
        eos_id=args.eos_id,
        tokens_field=args.tokens_field,
        token_dtype=args.token_dtype,
    )
    options = WriterOptions(
        format=args.format,
        compression=args.compression,
        hashes=tuple(args.hashes),
        size_limit=args.size_limit,
    )
    with (
        progress(None, "convert", unit="sample") as samples,
        progress(None, "upload", bytes_=True) as uploaded,
    ):
        index = convert(
            source,
            args.dst,
            columns=args.columns,
            select=args.select,
            options=options,
            workers=args.workers,
            overwrite=args.overwrite,
            on_samples=samples.update,
            on_bytes=uploaded.update,
        )
    size = sum(info.bytes for info in stored_files(index))
    sys.stdout.write(
        f"wrote {index.samples:,} samples in {len(index.shards):,} shards "
        f"({format_bytes(size)}) to {args.dst}\n"
    )
    return 0


def run_cp(args: argparse.Namespace) -> int:
    """``astream cp SRC DST``."""
    with progress(None, "copy", bytes_=True) as bar:
        index = copy_dataset(
            args.src,
            args.dst,
            overwrite=args.overwrite,
            concurrency=args.concurrency,
            on_bytes=bar.update,
        )
    files = stored_files(index)
    size = sum(info.bytes for info in files)
    sys.stdout.write(
        f"copied {len(files) + 1:,} files ({format_bytes(size)}) from {args.src} to {args.dst}\n"
    )
    return 0
