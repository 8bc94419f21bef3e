"""``astream convert`` and ``astream cp``: writing datasets into stores."""

from __future__ import annotations

import argparse
import contextlib
import sys

from astream.cli.output import format_bytes, plural, progress
from astream.convert import WriterOptions, convert, copy_dataset, open_source
from astream.convert.copy import stored_files
from astream.storage.registry import url_scheme

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
    # The bar counts the source's units (files, byte ranges, row groups), whose number is known
    # before writing; samples written so far follow it. An upload bar only where a separate
    # upload happens: a remote DST written by several workers, then copied up.
    uploads = url_scheme(args.dst) != "file" and args.workers > 1
    with (
        progress(None, "convert", unit="part") as bar,
        progress(None, "upload", bytes_=True) if uploads else contextlib.nullcontext() as upload,
    ):
        samples = 0

        def on_samples(count: int) -> None:
            nonlocal samples
            samples += count
            bar.set_postfix(f"{plural(samples, 'sample')}")

        def on_units(done: int, total: int) -> None:
            bar.set_total(total)
            bar.update(done - bar.count)

        index = convert(
            source,
            args.dst,
            columns=args.columns,
            select=args.select,
            options=options,
            workers=args.workers,
            overwrite=args.overwrite,
            on_samples=on_samples,
            on_units=on_units,
            on_bytes=None if upload is None else upload.update,
            on_upload_total=None if upload is None else upload.set_total,
        )
    size = sum(info.bytes for info in stored_files(index))
    sys.stdout.write(
        f"wrote {plural(index.samples, 'sample')} in {plural(len(index.shards), 'shard')} "
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
            on_total=bar.set_total,
        )
    files = stored_files(index)
    size = sum(info.bytes for info in files)
    sys.stdout.write(
        f"copied {plural(len(files) + 1, 'file')} ({format_bytes(size)}) "
        f"from {args.src} to {args.dst}\n"
    )
    return 0
