"""segflow.tasks.io.parquet: the product's one Parquet reader (no dataset scan), checked against Arrow's own."""

import io

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from segflow.tasks.io.parquet import iter_folder_batches, read_folder, read_parquet, read_where


def _plan(shards: int = 4, rows: int = 5) -> pa.Table:
    return pa.table(
        {
            "shard_id": [f"s{i:03d}" for i in range(shards) for _ in range(rows)],
            "key": [f"img-{i}-{j}" for i in range(shards) for j in range(rows)],
            "n": list(range(shards * rows)),
        }
    )


def _written(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=5, **kw)
    return buf.getvalue()


def test_read_parquet_takes_bytes_a_file_or_a_path(tmp_path):
    table = _plan()
    data = _written(table)
    (tmp_path / "p.parquet").write_bytes(data)
    assert read_parquet(data).equals(table)
    assert read_parquet(io.BytesIO(data), ["n", "key"]).column_names == ["n", "key"]
    assert read_parquet(str(tmp_path / "p.parquet")).equals(table)


@pytest.mark.parametrize("statistics", [True, False])
def test_read_where_equals_arrows_filter_and_skips_row_groups(statistics):
    table = _plan()
    data = _written(table, write_statistics=statistics)
    expected = pq.ParquetFile(io.BytesIO(data)).read().filter(ds.field("shard_id") == "s002")
    got = read_where(data, "shard_id", "s002")
    assert got.equals(expected) and got.num_rows == 5
    assert read_where(data, "shard_id", "s002", ["n"]).column("n").to_pylist() == list(range(10, 15))
    # negative control: a value no row has gives no rows, with the asked-for columns
    none = read_where(data, "shard_id", "s999", ["key"])
    assert none.num_rows == 0 and none.column_names == ["key"]
    with pytest.raises(KeyError, match="no column 'shard'"):
        read_where(data, "shard", "s002")


def test_read_where_reads_only_the_row_groups_its_statistics_admit():
    """Row groups whose min/max exclude the value are never decoded: one is made unreadable to show it."""
    table = _plan()
    data = bytearray(_written(table))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    assert meta.num_row_groups == 4
    first = meta.row_group(0).column(1)  # "key" of shard s000: its pages are overwritten with garbage
    start = first.dictionary_page_offset or first.data_page_offset
    data[start : start + first.total_compressed_size] = b"\xff" * first.total_compressed_size
    assert read_where(bytes(data), "shard_id", "s002")["n"].to_pylist() == list(range(10, 15))
    with pytest.raises(OSError):  # negative control: the damaged group is read when asked for
        read_where(bytes(data), "shard_id", "s000")


def test_a_folder_reads_its_parts_in_name_order_and_skips_hidden_and_other_files(tmp_path):
    table = _plan()
    folder = tmp_path / "masks.parquet"
    folder.mkdir()
    (folder / "part-b.parquet").write_bytes(_written(table.slice(10, 10)))
    (folder / "part-a.parquet").write_bytes(_written(table.slice(0, 10)))
    (folder / "_parts.parquet").write_bytes(_written(table.slice(0, 3)))
    (folder / ".part-c.parquet").write_bytes(_written(table.slice(0, 3)))
    (folder / "notes.json").write_text("{}")
    assert read_folder(str(folder)).equals(table)
    as_arrow = ds.dataset(str(folder), format="parquet", exclude_invalid_files=True).to_table()
    assert read_folder(str(folder)).equals(as_arrow)  # what Arrow's dataset reads of the folder
    batches = list(iter_folder_batches(str(folder), ["n"]))
    assert pa.Table.from_batches(batches)["n"].to_pylist() == list(range(20))
    assert read_folder(str(tmp_path / "missing")).num_rows == 0
    assert list(iter_folder_batches(str(tmp_path / "missing"))) == []
