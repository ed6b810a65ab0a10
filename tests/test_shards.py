import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Value, load_dataset

from builder.manifest import sha256_file
from builder.shards import row_nbytes, write_config

FEATURES = Features({
    "pair_id": Value("string"),
    "turns": Value("int32"),
    "seed": Value("int64"),
    "score": Value("float32"),
    "ok": Value("bool"),
    "chosen": List({"role": Value("string"), "content": Value("string")}),
})


def make_table(n: int, seed: int = 0) -> pa.Table:
    """Rows of varied length; built with default (int64/double) types so the writer must cast."""
    rng = np.random.default_rng(seed)
    words = np.array(["alpha", "beta", "gamma", "delta", "census", "persona", "prompt"])
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words, rng.integers(1, 60)))
        rows.append({"pair_id": f"p{i:05d}", "turns": i % 7, "seed": 2**40 + i, "score": i / 3,
                     "ok": i % 2 == 0,
                     "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": text}]})
    return pa.Table.from_pylist(rows)


def test_identical_bytes_whatever_the_batching(tmp_path):
    table = make_table(600)
    kw = dict(max_shard_bytes=40_000, row_group_bytes=9_000)
    a = write_config(tmp_path / "a", "c", "train", table, FEATURES, **kw)
    b = write_config(tmp_path / "b", "c", "train", iter(table.to_batches(max_chunksize=23)), FEATURES, **kw)
    c = write_config(tmp_path / "c", "c", "train", table, FEATURES, **kw)
    assert len(a) > 1
    assert a == b == c
    for shard in a:
        assert sha256_file(tmp_path / "a" / shard["path"]) == shard["sha256"]
        assert (tmp_path / "a" / shard["path"]).stat().st_size == shard["bytes"]


def test_shard_names_sizes_row_groups_and_page_index(tmp_path):
    table = make_table(600)
    shards = write_config(tmp_path, "c", "test_seen", table, FEATURES, max_shard_bytes=40_000, row_group_bytes=9_000)
    n = len(shards)
    assert n >= 3
    assert [s["path"] for s in shards] == [f"c/test_seen-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [s["path"][2:] for s in shards]  # no *.tmp left
    assert sum(s["rows"] for s in shards) == 600

    rows_read = []
    for shard in shards:
        path = tmp_path / shard["path"]
        meta = pq.read_metadata(path)
        assert meta.num_rows == shard["rows"]
        assert meta.num_row_groups >= 1
        shard_table = pq.read_table(path)
        rows_read += shard_table["pair_id"].to_pylist()
        sizes = sum(row_nbytes(col) for col in shard_table.columns)
        assert sizes.sum() <= 40_000  # shard bound (our uncompressed measure)
        start = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            assert sizes[start:start + group.num_rows].sum() <= 9_000  # row group bound
            start += group.num_rows
            col = group.column(0)
            assert col.compression == "ZSTD"
            assert col.has_column_index and col.has_offset_index  # page index written
        assert b"huggingface" in meta.metadata
        assert not any(k.lower() in (b"created", b"date", b"time") for k in meta.metadata)
    assert rows_read == table["pair_id"].to_pylist()  # order kept across shards


def test_rewrite_removes_stale_shards_and_empty_split(tmp_path):
    write_config(tmp_path, "c", "train", make_table(600), FEATURES, max_shard_bytes=40_000, row_group_bytes=9_000)
    shards = write_config(tmp_path, "c", "train", make_table(50), FEATURES)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["train-00000-of-00001.parquet"]
    assert shards[0]["rows"] == 50
    empty = write_config(tmp_path, "c", "test", iter([]), FEATURES)
    assert empty[0]["rows"] == 0 and empty[0]["path"] == "c/test-00000-of-00001.parquet"


def test_row_nbytes_is_additive_over_slices():
    table = make_table(50)
    for column in table.columns:
        whole = row_nbytes(column)
        parts = np.concatenate([row_nbytes(column.slice(0, 17)), row_nbytes(column.slice(17))])
        assert np.array_equal(whole, parts)
    text = pa.array(["ab", "", None, "xyz"])
    assert row_nbytes(text).tolist() == [6, 4, 4, 7]  # bytes + 4-byte offset


def test_load_dataset_gives_rows_and_exact_types(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    table = make_table(120)
    shards = write_config(tmp_path / "ds", "c", "train", table, FEATURES, max_shard_bytes=10_000, row_group_bytes=4_000)
    assert len(shards) > 1
    files = [str(tmp_path / "ds" / s["path"]) for s in shards]
    ds = load_dataset("parquet", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features == FEATURES  # int32 stays int32, list of message structs stays one
    assert ds.num_rows == 120
    assert ds[5] == {**table.slice(5, 1).to_pylist()[0], "score": pytest.approx(5 / 3)}
    assert re.fullmatch(r"c/train-0000\d-of-0000\d\.parquet", shards[0]["path"])
