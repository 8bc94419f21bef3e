"""Dataset converters: the layouts users bring, written as astream datasets.

Each layout is a :class:`Source` (an image folder, JSONL text, WebDataset tars, ...);
:func:`convert` writes one to a local folder or any store URL, in parallel if asked::

    from astream.convert import ImageFolder, convert

    convert(ImageFolder("imagenet/train"), "s3://bucket/imagenet/train", workers=8)
"""

from __future__ import annotations

from astream.convert.base import Source, coerce_text, infer_columns, sniff_image
from astream.convert.build import OUTPUT_FORMATS, WriterOptions, convert, write_dataset
from astream.convert.copy import copy_dataset, stored_files
from astream.convert.images import ImageFolder, SegmentationPairs
from astream.convert.layouts import LAYOUTS, detect_layout, open_source
from astream.convert.tables import DelimitedFiles, JSONLFiles, ParquetFiles, text_corpus
from astream.convert.tars import CaptionPairs, WebDatasetTars
from astream.convert.tokens import PackedTokens, pack_tokens

__all__ = [
    "LAYOUTS",
    "OUTPUT_FORMATS",
    "CaptionPairs",
    "DelimitedFiles",
    "ImageFolder",
    "JSONLFiles",
    "PackedTokens",
    "ParquetFiles",
    "SegmentationPairs",
    "Source",
    "WebDatasetTars",
    "WriterOptions",
    "coerce_text",
    "convert",
    "copy_dataset",
    "detect_layout",
    "infer_columns",
    "open_source",
    "pack_tokens",
    "sniff_image",
    "stored_files",
    "text_corpus",
    "write_dataset",
]
