"""Dataset formats: the index, column encodings, codecs, hashes, shard readers and writers.

Pure and synchronous: bytes and local files only. Interoperable with mosaicml-streaming's MDS,
JSONL and CSV/TSV/XSV layouts (index version 2); see ``spec/FORMAT.md``.
"""

from __future__ import annotations

from astream.format.codecs import (
    Codec,
    compress,
    compression_extension,
    compression_names,
    decompress,
    decompress_file,
    is_compression,
    parse_compression,
)
from astream.format.encodings import (
    Encoding,
    NDArrayEncoding,
    encoding_names,
    get_encoding,
    register_encoding,
)
from astream.format.hashing import hash_bytes, hash_file, hash_names, is_hash
from astream.format.index import (
    INDEX_BASENAME,
    SHARD_FORMATS,
    DatasetIndex,
    FileInfo,
    ShardInfo,
    check_basename,
    load_index,
    merge_index,
)
from astream.format.reader import (
    ShardReader,
    decode_sample,
    offsets_range,
    open_shard,
    parse_offsets,
    payload_basename,
)
from astream.format.writer import (
    LocalCSVWriter,
    LocalJSONLWriter,
    LocalJSONWriter,
    LocalMDSWriter,
    LocalTSVWriter,
    LocalXSVWriter,
    ShardWriter,
)

__all__ = [
    "INDEX_BASENAME",
    "SHARD_FORMATS",
    "Codec",
    "DatasetIndex",
    "Encoding",
    "FileInfo",
    "LocalCSVWriter",
    "LocalJSONLWriter",
    "LocalJSONWriter",
    "LocalMDSWriter",
    "LocalTSVWriter",
    "LocalXSVWriter",
    "NDArrayEncoding",
    "ShardInfo",
    "ShardReader",
    "ShardWriter",
    "check_basename",
    "compress",
    "compression_extension",
    "compression_names",
    "decode_sample",
    "decompress",
    "decompress_file",
    "encoding_names",
    "get_encoding",
    "hash_bytes",
    "hash_file",
    "hash_names",
    "is_compression",
    "is_hash",
    "load_index",
    "merge_index",
    "offsets_range",
    "open_shard",
    "parse_compression",
    "parse_offsets",
    "payload_basename",
    "register_encoding",
]
