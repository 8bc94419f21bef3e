"""Choosing a converter for a path: by ``layout`` name, or by what the path holds."""

from __future__ import annotations

from pathlib import Path

from astream.convert.base import Source
from astream.convert.images import IMAGE_EXTENSIONS, ImageFolder, SegmentationPairs
from astream.convert.tables import DelimitedFiles, JSONLFiles, ParquetFiles, text_corpus
from astream.convert.tars import CaptionPairs, WebDatasetTars
from astream.convert.tokens import PackedTokens
from astream.errors import ConfigError, FormatError

__all__ = ["LAYOUTS", "detect_layout", "open_source"]

#: Layout names :func:`open_source` takes.
LAYOUTS = (
    "imagefolder",
    "segmentation",
    "webdataset",
    "captions",
    "jsonl",
    "text",
    "tokens",
    "csv",
    "tsv",
    "parquet",
)

_COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".xz")
# File kinds by suffix (after any compression suffix), and the layout each implies.
_KINDS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".tar": "webdataset",
    ".tgz": "webdataset",
}
# Which file kind each layout reads.
_LAYOUT_KIND = {
    "webdataset": "webdataset",
    "captions": "webdataset",
    "jsonl": "jsonl",
    "text": "jsonl",
    "tokens": "jsonl",
    "csv": "csv",
    "tsv": "tsv",
    "parquet": "parquet",
}


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _KINDS.get(Path(name).suffix)


def _files(path: Path, kind: str) -> list[Path]:
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and _file_kind(p) == kind)
    if not found:
        raise FileNotFoundError(f"{path} holds no {kind} files")
    return found


def detect_layout(path: Path) -> str:
    """The layout of ``path``: from a file's suffix, or from what a folder holds.

    A folder with ``images/`` and ``annotations/`` is ``segmentation``; one holding tar,
    Parquet, JSONL, CSV or TSV files (searched recursively, in that order of preference) is
    that; one whose subfolders hold images is ``imagefolder``.

    :raises FileNotFoundError: when ``path`` does not exist.
    :raises FormatError: when no layout fits.
    """
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file():
        kind = _file_kind(path)
        if kind is None:
            raise FormatError(f"cannot tell the layout of {path} from its name; give --layout")
        return kind
    if (path / "images").is_dir() and (path / "annotations").is_dir():
        return "segmentation"
    kinds = {_file_kind(p) for p in path.rglob("*") if p.is_file()}
    for kind in ("webdataset", "parquet", "jsonl", "csv", "tsv"):
        if kind in kinds:
            return kind
    for sub in path.iterdir():
        if sub.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.rglob("*")):
            return "imagefolder"
    raise FormatError(f"cannot tell the layout of {path}; give --layout")


def open_source(
    src: str | Path,
    layout: str | None = None,
    *,
    class_names: bool = False,
    text_field: str = "text",
    seq_len: int | None = None,
    eos_id: int | None = None,
    tokens_field: str = "tokens",
    token_dtype: str = "int32",
) -> Source:
    """The converter for ``src`` as ``layout`` (detected when ``None``; see :data:`LAYOUTS`).

    :param class_names: ``imagefolder``: also store each sample's class name.
    :param text_field: ``text``: the field holding the document text.
    :param seq_len: ``tokens``: tokens per packed sequence (required).
    :param eos_id: ``tokens``: the token after each document.
    :param tokens_field: ``tokens``: the JSONL field holding token ids.
    :param token_dtype: ``tokens``: the sequences' dtype.
    :raises FileNotFoundError: when ``src`` does not exist or holds no matching files.
    :raises FormatError: for a layout that cannot be detected.
    :raises ConfigError: for an unknown layout or ``tokens`` without ``seq_len``.
    """
    path = Path(src).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {src}")
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "imagefolder":
        return ImageFolder(path, class_names=class_names)
    if layout == "segmentation":
        return SegmentationPairs(path)
    files = _files(path, _LAYOUT_KIND[layout])
    if layout == "webdataset":
        return WebDatasetTars(files)
    if layout == "captions":
        return CaptionPairs(files)
    if layout == "text":
        return text_corpus(files, text_field=text_field)
    if layout == "tokens":
        if seq_len is None:
            raise ConfigError("the tokens layout needs a sequence length (--seq-len)")
        return PackedTokens(
            JSONLFiles(files, fields=(tokens_field,)),
            seq_len,
            eos_id,
            field=tokens_field,
            dtype=token_dtype,
        )
    if layout in ("csv", "tsv"):
        return DelimitedFiles(files, "," if layout == "csv" else "\t")
    if layout == "parquet":
        return ParquetFiles(files)
    return JSONLFiles(files)
