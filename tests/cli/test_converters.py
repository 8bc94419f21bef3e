"""Each converter on small data made here: every sample written, read back with open_shard."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import Run, jpeg, png, read_dataset, write_jsonl

from astream.cli.output import progress
from astream.convert import (
    CaptionPairs,
    ImageFolder,
    JSONLFiles,
    PackedTokens,
    SegmentationPairs,
    WebDatasetTars,
    WriterOptions,
    convert,
    detect_layout,
    infer_columns,
    pack_tokens,
    write_dataset,
)
from astream.errors import EncodingError, FormatError


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_image_folder_round_trip(run: Run, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("convert", image_folder, out, "--class-names", "--hashes", "sha1")
    assert result.status == 0, result.err
    index, samples = read_dataset(out)
    shard = index.shards[0]
    assert dict(zip(shard.column_names, shard.column_encodings, strict=True)) == {
        "class_name": "str",
        "image": "jpeg",
        "label": "int",
    }
    files = sorted(image_folder.rglob("*.jpg"))
    assert len(samples) == len(files) == 12
    for sample, path in zip(samples, files, strict=True):
        assert sample["label"] == ["cat", "dog", "fox"].index(path.parent.name)
        assert sample["class_name"] == path.parent.name
        assert sample["image"].size == (8, 8)  # decoded by the jpeg encoding
    raw = run("convert", image_folder, tmp_path / "raw", "--columns", "image:bytes")
    assert raw.status == 0
    assert [s["image"] for s in read_dataset(tmp_path / "raw")[1]] == [
        p.read_bytes() for p in files
    ]


def test_workers_keep_the_source_order(run: Run, image_folder: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("convert", image_folder, one, "--columns", "image:bytes").status == 0
    result = run("convert", image_folder, two, "--columns", "image:bytes", "--workers", "2")
    assert result.status == 0, result.err
    index, samples = read_dataset(two)
    assert sorted(p.name for p in two.iterdir()) == ["index.json", "part-00000", "part-00001"]
    assert index.shards[0].raw.basename == "part-00000/shard.00000.mds"
    assert samples == read_dataset(one)[1]


def test_cifar_style_png_folder(tmp_path: Path) -> None:
    root = tmp_path / "cifar" / "train"
    for name in ("airplane", "automobile"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(png(i))
    write_dataset(ImageFolder(root), tmp_path / "out")
    index, samples = read_dataset(tmp_path / "out")
    assert index.shards[0].column_encodings == ("png", "int")
    assert [s["label"] for s in samples] == [0, 0, 0, 1, 1, 1]


def test_jsonl_split_into_byte_ranges(text_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c4.jsonl", text_rows)
    # Ranges of 100 bytes cut through lines: each line must be read exactly once.
    source = JSONLFiles([path], chunk_size=100)
    assert len(source.units()) > 10
    assert list(source) == text_rows
    index = write_dataset(source, tmp_path / "out", workers=1)
    assert index.samples == len(text_rows)
    assert read_dataset(tmp_path / "out")[1] == text_rows


def test_text_corpus_gzip_to_jsonl_shards(
    run: Run, text_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    src = tmp_path / "c4"
    src.mkdir()
    for part in range(2):
        rows = text_rows[part * 30 : (part + 1) * 30]
        with gzip.open(src / f"c4-train.{part:05}.json.gz", "wt") as f:
            f.writelines(json.dumps({**row, "url": "http://x"}) + "\n" for row in rows)
    out = tmp_path / "out"
    result = run("convert", src, out, "--layout", "text", "--format", "jsonl")
    assert result.status == 0, result.err
    index, samples = read_dataset(out)
    assert index.shards[0].format == "json"
    assert samples == [{"text": row["text"]} for row in text_rows]


def test_csv_and_tsv_values_typed(run: Run, tmp_path: Path) -> None:
    rows = [
        {"name": f"n{i}", "code": f"00{i}", "count": str(i), "ratio": str(i / 2)} for i in range(9)
    ]
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        path = tmp_path / f"table.{fmt}"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=sep)
            writer.writeheader()
            writer.writerows(rows)
        out = tmp_path / f"out-{fmt}"
        result = run("convert", path, out, "--format", fmt)
        assert result.status == 0, result.err
        index, samples = read_dataset(out)
        assert index.shards[0].format == fmt
        assert samples == [
            {
                "name": r["name"],
                "code": r["code"],
                "count": int(r["count"]),
                "ratio": float(r["ratio"]),
            }
            for r in rows
        ]  # "001" keeps its zeros: a str column


def test_parquet_row_groups(run: Run, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"text": [f"t{i}" for i in range(25)], "label": list(range(25))})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=10)
    out = tmp_path / "out"
    result = run("convert", tmp_path / "data.parquet", out, "--workers", "1")
    assert result.status == 0, result.err
    assert read_dataset(out)[1] == table.to_pylist()


def test_webdataset_tars(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "wds"
    src.mkdir()
    expected = []
    for shard in range(2):
        members = []
        for i in range(3):
            key = f"{shard:02}{i:04}"
            image, label = jpeg(i), shard * 3 + i
            meta = {"width": 8, "tags": ["a", str(i)]}
            members += [
                (f"{key}.jpg", image),
                (f"{key}.cls", str(label).encode()),
                (f"{key}.json", json.dumps(meta).encode()),
                (f"{key}.seg.png", png(i)),
            ]
            expected.append({"key": key, "cls": label, "json": meta, "jpg": image})
        _tar(src / f"shard-{shard:06}.tar", members)
    assert detect_layout(src) == "webdataset"
    samples = list(WebDatasetTars(sorted(src.glob("*.tar"))))
    assert [s["key"] for s in samples] == [e["key"] for e in expected]
    assert set(samples[0]) == {"key", "jpg", "cls", "json", "seg_png"}
    out = tmp_path / "out"
    result = run("convert", src, out, "--columns", "jpg:bytes")
    assert result.status == 0, result.err
    index, back = read_dataset(out)
    encodings = dict(
        zip(index.shards[0].column_names, index.shards[0].column_encodings, strict=True)
    )
    assert encodings == {
        "cls": "int",
        "jpg": "bytes",
        "json": "json",
        "key": "str",
        "seg_png": "png",
    }
    for sample, want in zip(back, expected, strict=True):
        assert {k: sample[k] for k in want} == want


def test_caption_pairs(tmp_path: Path) -> None:
    path = _tar(
        tmp_path / "laion-00000.tar",
        [
            ("000.jpg", jpeg(0)),
            ("000.txt", b"a red square"),
            ("001.jpg", jpeg(1)),
            ("001.json", json.dumps({"caption": "a blue square", "url": "u"}).encode()),
        ],
    )
    write_dataset(CaptionPairs([path]), tmp_path / "out", columns={"image": "bytes"})
    samples = read_dataset(tmp_path / "out")[1]
    assert samples == [
        {"key": "000", "image": jpeg(0), "caption": "a red square"},
        {"key": "001", "image": jpeg(1), "caption": "a blue square"},
    ]
    broken = _tar(tmp_path / "broken.tar", [("002.jpg", jpeg(2))])
    with pytest.raises(FormatError, match="'002' needs an image member and a caption"):
        list(CaptionPairs([broken]))


def test_segmentation_pairs(run: Run, tmp_path: Path) -> None:
    root = tmp_path / "ade20k"
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(2):
            stem = f"ADE_{split}_{i:08}"
            (root / "images" / split / f"{stem}.jpg").write_bytes(jpeg(i))
            (root / "annotations" / split / f"{stem}.png").write_bytes(png(i))
    out = tmp_path / "out"
    result = run("convert", root, out)
    assert result.status == 0, result.err
    index, samples = read_dataset(out)
    assert index.shards[0].column_encodings == ("jpeg", "str", "png")
    assert [s["key"] for s in samples] == [
        "training/ADE_training_00000000",
        "training/ADE_training_00000001",
        "validation/ADE_validation_00000000",
        "validation/ADE_validation_00000001",
    ]
    assert np.asarray(samples[1]["mask"]).tolist() == np.full((8, 8), 1).tolist()
    (root / "annotations" / "training" / "ADE_training_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask under"):
        SegmentationPairs(root).units()


def test_pack_tokens() -> None:
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    packed = list(pack_tokens(docs, 4, eos_id=0))
    assert [p.tolist() for p in packed] == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 10]]
    assert all(p.dtype == np.int32 for p in packed)
    padded = list(pack_tokens(docs, 5, eos_id=0, dtype=np.uint16, pad_id=65535))
    assert [p.tolist() for p in padded] == [
        [1, 2, 3, 0, 4],
        [5, 0, 6, 7, 8],
        [9, 10, 0, 65535, 65535],
    ]
    assert list(pack_tokens([], 3, eos_id=None)) == []
    with pytest.raises(ValueError, match="seq_len"):
        list(pack_tokens(docs, 0, eos_id=0))


def test_tokens_layout_packs_into_fixed_arrays(run: Run, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 50_000, size=int(n)).tolist() for n in rng.integers(1, 40, size=50)]
    path = write_jsonl(tmp_path / "tokens.jsonl", [{"tokens": d} for d in docs])
    out = tmp_path / "out"
    result = run(
        "convert", path, out, "--layout", "tokens", "--seq-len", "16", "--eos-id", "0",
        "--token-dtype", "uint16",
    )  # fmt: skip
    assert result.status == 0, result.err
    index, samples = read_dataset(out)
    assert index.shards[0].column_encodings == ("ndarray:uint16:16",)
    want = list(pack_tokens(docs, 16, eos_id=0, dtype=np.uint16))
    assert len(samples) == len(want) == sum(len(d) + 1 for d in docs) // 16
    for sample, sequence in zip(samples, want, strict=True):
        np.testing.assert_array_equal(sample["tokens"], sequence)
    source = PackedTokens(JSONLFiles([path]), seq_len=16, eos_id=0)
    assert source.peek(1)[0]["tokens"].dtype == np.int32
    missing = run("convert", path, tmp_path / "x", "--layout", "tokens")
    assert missing.status == 1 and "--seq-len" in missing.err


def test_infer_columns_rules() -> None:
    samples = [
        {"a": 1, "b": 1.5, "c": True, "d": [1], "e": b"\x00", "f": np.zeros((2, 3), np.float32)}
    ]
    assert infer_columns(samples) == {
        "a": "int", "b": "float64", "c": "json", "d": "json", "e": "bytes", "f": "ndarray:float32:2,3",
    }  # fmt: skip
    assert infer_columns([{"a": 1}, {"a": 2.5}], "jsonl") == {"a": "float"}
    with pytest.raises(EncodingError, match="column 'c' holds bool values"):
        infer_columns(samples, "csv")
    with pytest.raises(EncodingError, match="column 'x': cannot infer"):
        infer_columns([{"x": object()}])
    assert infer_columns([{"x": object()}], overrides={"x": "pkl"}) == {"x": "pkl"}


def test_encoding_errors_name_the_column(run: Run, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"v": 1}] * 70 + [{"v": "late string"}])
    result = run("convert", path, tmp_path / "out")
    assert result.status == 1
    assert "column 'v'" in result.err and result.err.count("\n") == 1
    assert run("convert", path, tmp_path / "ok", "--columns", "v:json").status == 0
    assert read_dataset(tmp_path / "ok")[1][-1] == {"v": "late string"}


def test_existing_output_needs_overwrite(run: Run, jsonl_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("convert", jsonl_file, out).status == 0
    again = run("convert", jsonl_file, out)
    assert again.status == 1 and "is not empty" in again.err
    assert run("convert", jsonl_file, out, "--overwrite", "--format", "jsonl").status == 0
    assert read_dataset(out)[0].shards[0].format == "json"


def test_convert_to_s3(run: Run, image_folder: Path, tmp_path: Path, s3: str) -> None:
    url = f"s3://{s3}/imagenet/{uuid.uuid4().hex}"
    result = run(
        "convert", image_folder, url, "--compression", "zstd", "--hashes", "sha1",
        "--size-limit", "2kb",
    )  # fmt: skip
    assert result.status == 0, result.err
    facts = run("info", url, "--json").json()
    assert facts["samples"] == 12 and facts["shards"] > 1 and facts["compression"] == ["zstd"]
    assert run("verify", url).status == 0
    back = tmp_path / "back"
    assert run("cp", url, back).status == 0
    assert [s["label"] for s in read_dataset(back)[1]] == [0] * 4 + [1] * 4 + [2] * 4
    exists = run("convert", image_folder, url)
    assert exists.status == 1 and "a dataset exists at" in exists.err
    uploaded: list[int] = []
    totals: list[int] = []
    parallel = convert(
        ImageFolder(image_folder),
        f"s3://{s3}/parallel",
        options=WriterOptions(size_limit="2kb"),
        workers=2,
        on_bytes=uploaded.append,
        on_upload_total=totals.append,
    )
    assert parallel.samples == 12
    assert totals == [sum(uploaded)] and sum(uploaded) > 0  # the upload bar's total
    assert run("verify", f"s3://{s3}/parallel").status == 0


def test_progress_counts_units_with_a_total_from_every_worker(
    image_folder: Path, tmp_path: Path
) -> None:
    # 12 images are 12 units: the bar's total is known before writing, and with two workers
    # each unit is reported as it finishes (not only each worker's part at its end).
    units: list[tuple[int, int]] = []
    samples: list[int] = []
    convert(
        ImageFolder(image_folder),
        str(tmp_path / "out"),
        columns={"image": "bytes"},
        workers=2,
        on_samples=samples.append,
        on_units=lambda done, total: units.append((done, total)),
    )
    assert units == [(done, 12) for done in range(13)]
    assert sum(samples) == 12


def test_cli_shows_no_upload_bar_for_a_local_destination(
    run: Run, jsonl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import astream.cli.transfer as transfer

    bars: list[Any] = []

    def recording(total: int | None, desc: str, **kwargs: Any) -> Any:
        bars.append(progress(total, desc, **kwargs))
        return bars[-1]

    monkeypatch.setattr(transfer, "progress", recording)
    assert run("convert", jsonl_file, tmp_path / "out", "--workers", "2").status == 0
    [bar] = bars
    assert bar.count == len(JSONLFiles([jsonl_file]).units())


def test_jsonl_hint_names_select(run: Run, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "tags": ["x"]}])
    result = run("convert", path, tmp_path / "out", "--format", "jsonl")
    assert result.status == 1 and "--select" in result.err and "--columns" not in result.err
