"""The ``astream`` command line: argument parsing, dispatch and error reporting.

Every user error (a missing dataset, a bad URL, a corrupt index, an unknown scheme: any
:class:`~astream.errors.AstreamError` or ``OSError``) prints one line ``astream: error: ...``
on stderr and exits 1; a usage error exits 2, as argparse does. No traceback for either.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence

from astream.errors import AstreamError, EncodingError
from astream.format import compression_names, get_encoding, is_hash, parse_compression
from astream.units import parse_bytes

__all__ = ["build_parser", "main"]

_Command = Callable[[argparse.Namespace], int]


def _columns(text: str) -> dict[str, str]:
    """``name:encoding,...``; a piece without ``:`` continues the previous encoding's
    arguments (``x:ndarray:uint8:3,4``)."""
    pieces: list[str] = []
    for piece in text.split(","):
        if ":" not in piece and pieces:
            pieces[-1] += f",{piece}"
        else:
            pieces.append(piece)
    columns: dict[str, str] = {}
    for piece in pieces:
        name, _, spec = piece.partition(":")
        if not name or not spec:
            raise argparse.ArgumentTypeError(f"expected name:encoding, got {piece!r}")
        try:
            get_encoding(spec)
        except EncodingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        columns[name.strip()] = spec.strip()
    return columns


def _compression(text: str) -> str | None:
    if text.lower() in ("", "none"):
        return None
    try:
        parse_compression(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _hashes(text: str) -> list[str]:
    names = sorted({name.strip() for name in text.split(",") if name.strip()})
    for name in names:
        if not is_hash(name):
            raise argparse.ArgumentTypeError(f"unknown hash algorithm {name!r}")
    return names


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _hash(text: str) -> str:
    if not is_hash(text):
        raise argparse.ArgumentTypeError(f"unknown hash algorithm {text!r}")
    return text


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _codecs() -> str:
    return ", ".join(sorted(name for name in compression_names() if ":" not in name))


_EXAMPLES = """\
examples:
  astream convert ./imagenet/train s3://bucket/imagenet --compression zstd --workers 8
  astream convert corpus.jsonl ./corpus --select text --size-limit 32mb
  astream info s3://bucket/imagenet
  astream ls s3://bucket/imagenet --json
  astream verify s3://bucket/imagenet --hash xxh64
  astream cp s3://bucket/imagenet gs://other/imagenet
  astream bench s3://bucket/imagenet --limit 10000 --shuffle
  astream merge s3://bucket/laion          (one index over parts written in parallel)
"""


def _convert_epilog() -> str:
    from astream.format.encodings import encoding_names

    encodings = ", ".join(sorted(name for name in encoding_names() if ":" not in name))
    return (
        "examples:\n"
        "  astream convert ./imagenet/train ./imagenet-mds --compression zstd:7 --workers 4\n"
        "  astream convert shards/ s3://bucket/laion --layout captions --hashes xxh64\n"
        "  astream convert corpus.jsonl.gz ./corpus --format jsonl --select text,id\n"
        "  astream convert rows.csv ./rows --columns id:int,vec:ndarray:float32:4\n"
        f"\ncompression codecs: {_codecs()} (CODEC:LEVEL picks a level, e.g. zstd:7)\n"
        + textwrap.fill(
            f"column encodings: {encodings}, ndarray:DTYPE[:SHAPE]",
            width=88,
            subsequent_indent="  ",
        )
    )


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: str,
    help_: str,
    *,
    json_: bool = False,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=run)
    if json_:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``astream`` argument parser, every subcommand included."""
    from astream import __version__
    from astream.convert.build import OUTPUT_FORMATS
    from astream.convert.layouts import LAYOUTS

    parser = argparse.ArgumentParser(
        prog="astream",
        description="Build, inspect, check, copy, merge and benchmark astream datasets.",
        epilog=_EXAMPLES + f"\ncompression codecs: {_codecs()}\n"
        "`astream COMMAND --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"astream {__version__}")
    subparsers = parser.add_subparsers(dest="name", metavar="COMMAND", required=True)

    convert = _command(
        subparsers,
        "convert",
        "convert",
        "build a dataset from files you have",
        epilog=_convert_epilog(),
    )
    convert.add_argument("src", help="a local file or folder")
    convert.add_argument("dst", help="a local folder or store URL (s3://, gs://, ...)")
    convert.add_argument("--layout", choices=LAYOUTS, help="what SRC holds (default: detect)")
    convert.add_argument("--format", choices=OUTPUT_FORMATS, default="mds", help="shard format")
    convert.add_argument(
        "--columns", type=_columns, help="name:encoding,... replacing inferred encodings"
    )
    convert.add_argument(
        "--select", type=_names, help="name,...: keep only these fields of SRC's samples"
    )
    convert.add_argument(
        "--compression",
        type=_compression,
        help="codec, e.g. zstd or zstd:7 (default none; the codecs are listed below)",
    )
    convert.add_argument(
        "--hashes", type=_hashes, default=[], help="hash algorithms to record, e.g. sha1,xxh64"
    )
    convert.add_argument(
        "--size-limit", type=_size, default=1 << 26, help="bytes per shard (default 64mb)"
    )
    convert.add_argument("--workers", type=_positive, default=1, help="writer processes")
    convert.add_argument("--overwrite", action="store_true", help="replace data at DST")
    convert.add_argument(
        "--class-names", action="store_true", help="imagefolder: store class_name too"
    )
    convert.add_argument("--text-field", default="text", help="text: the text field")
    convert.add_argument("--seq-len", type=_positive, help="tokens: tokens per sequence")
    convert.add_argument("--eos-id", type=int, help="tokens: token after each document")
    convert.add_argument("--tokens-field", default="tokens", help="tokens: the token-id field")
    convert.add_argument("--token-dtype", default="int32", help="tokens: e.g. uint16, int32")

    info = _command(subparsers, "info", "info", "summarize a dataset", json_=True)
    info.add_argument("url", help="the dataset's folder or URL")

    ls = _command(subparsers, "ls", "ls", "list a dataset's files with sizes", json_=True)
    ls.add_argument("url", help="the dataset's folder or URL, or any prefix")
    ls.add_argument(
        "--store", action="store_true", help="list every object under URL, not the index"
    )

    verify = _command(
        subparsers, "verify", "verify", "check every file's size and hashes", json_=True
    )
    verify.add_argument("url", help="the dataset's folder or URL")
    verify.add_argument("--hash", type=_hash, help="check only this hash algorithm")

    cp = _command(subparsers, "cp", "cp", "copy a dataset between stores")
    cp.add_argument("src", help="the dataset's folder or URL")
    cp.add_argument("dst", help="the destination folder or URL")
    cp.add_argument("--overwrite", action="store_true", help="replace a dataset at DST")
    cp.add_argument("--concurrency", type=_positive, default=8, help="files in flight")

    merge = _command(
        subparsers, "merge", "merge", "write one index over datasets written in parts", json_=True
    )
    merge.add_argument("out", help="the folder or URL the parts lie under")
    merge.add_argument(
        "parts",
        nargs="*",
        help="part folders or index files, relative to OUT or full (default: every index.json "
        "below OUT)",
    )

    bench = _command(subparsers, "bench", "bench", "stream a dataset once and time it", json_=True)
    bench.add_argument("url", help="the dataset's folder or URL")
    bench.add_argument("--limit", type=_positive, help="stop after this many samples")
    bench.add_argument("--shuffle", action="store_true", help="read in shuffled order")
    bench.add_argument("--validate-hash", type=_hash, help="check shards with this hash")
    return parser


def _runner(name: str) -> _Command:
    # Imported per command: `astream info` need not load the converters or the engine.
    if name == "convert":
        from astream.cli.transfer import run_convert

        return run_convert
    if name == "cp":
        from astream.cli.transfer import run_cp

        return run_cp
    if name == "merge":
        from astream.cli.merge import run_merge

        return run_merge
    if name == "bench":
        from astream.cli.bench import run_bench

        return run_bench
    from astream.cli import examine

    runners: dict[str, _Command] = {
        "info": examine.run_info,
        "ls": examine.run_ls,
        "verify": examine.run_verify,
    }
    return runners[name]


def _fail(message: str) -> int:
    sys.stderr.write(f"astream: error: {message}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``astream`` command with ``argv`` (default ``sys.argv[1:]``); return its status.

    :returns: 0 on success, 1 on an error or a failed check, 2 on a usage error, 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _runner(args.command)(args)
    except KeyboardInterrupt:
        sys.stderr.write("astream: interrupted\n")
        return 130
    except BrokenPipeError:  # `astream ls ... | head`: the reader left, nothing to report
        return 1
    except (AstreamError, OSError) as exc:
        return _fail(str(exc) or type(exc).__name__)
    except ValueError as exc:  # bad option combinations found past parsing (e.g. --layout)
        return _fail(str(exc))
