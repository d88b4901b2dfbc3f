import pyarrow.parquet as pq
import pytest

from segflow.config import JobConfig
from segflow.tasks.plan.planner import PlanError, glob_to_regex, list_source, load_plan, make_plan, read_shard_rows


def job(src, out, **source):
    return JobConfig.model_validate(
        {
            "source": {"url": str(src), **source} if "list" not in source else source,
            "output": str(out),
            "shard_size": 3,
            "ontology": [{"id": 1, "name": "a"}],
            "stages": {
                "d": {"kind": "yolo", "weights": "yolo11n.yaml"},
                "m": {"kind": "sam", "weights": "x", "needs": ["d"]},
            },
        }
    )


@pytest.fixture()
def tree(tmp_path):
    src = tmp_path / "src"
    for rel in ["b.jpg", "a.png", "sub/c.JPG", "sub/deep/d.jpeg", "notes.txt", "sub/e.webp"]:
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * len(rel))
    return src


def test_listing_is_sorted_and_filtered_by_extension(tree):
    items = list_source(job(tree, "o").source)
    assert [k for _, k, _ in items] == ["a.png", "b.jpg", "sub/c.JPG", "sub/deep/d.jpeg", "sub/e.webp"]
    assert all(u.startswith(str(tree)) for u, _, _ in items)
    assert [s for _, _, s in items] == [len(k) for _, k, _ in items]


def test_glob_pattern(tree):
    keys = [k for _, k, _ in list_source(job(tree, "o", pattern="sub/**/*.jp*g").source)]
    assert keys == ["sub/deep/d.jpeg"]  # case-sensitive glob: c.JPG does not match *.jp*g
    assert [k for _, k, _ in list_source(job(tree, "o", pattern="*.jpg").source)] == ["b.jpg"]
    assert glob_to_regex("**/*.png").match("a.png") and glob_to_regex("**/*.png").match("x/y/a.png")
    assert not glob_to_regex("*.png").match("x/a.png")


def test_list_file_source(tree, tmp_path):
    lst = tmp_path / "uris.txt"
    lst.write_text(f"# images to label\nsub/c.JPG\n{tree}/b.jpg\n\nsub/c.JPG\n")
    (tmp_path / "sub").symlink_to(tree / "sub")
    items = list_source(job(tree, "o", list=str(lst)).source)
    # relative lines resolve against the list file's folder; duplicates are dropped; sorted by key
    assert [(u, k) for u, k, _ in items] == [(f"{tree}/b.jpg", f"{tree}/b.jpg"), (f"{tmp_path}/sub/c.JPG", "sub/c.JPG")]


def test_plan_is_deterministic_and_reused(tree, tmp_path):
    out = tmp_path / "out"
    plan = make_plan(job(tree, out))
    assert plan.shard_ids == ["shard-00000", "shard-00001"] and plan.num_images == 5 and not plan.reused
    rows = read_shard_rows(str(out), "shard-00001")
    assert [(r["image_id"], r["key"]) for r in rows] == [(4, "sub/deep/d.jpeg"), (5, "sub/e.webp")]
    assert pq.ParquetFile(out / "plan" / "plan.parquet").metadata.num_row_groups == 2  # one per shard

    (tree / "0-new.jpg").write_bytes(b"late")  # arrives later: must not reshuffle the planned shards
    again = make_plan(job(tree, out))
    assert again.reused and again.shard_ids == plan.shard_ids and again.num_images == 5
    assert read_shard_rows(str(out), "shard-00001") == rows
    assert load_plan(str(out))["num_images"] == 5

    with pytest.raises(PlanError, match="already holds the plan of a different source"):
        make_plan(job(tree / "sub", out))


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(PlanError, match="source not found"):
        list_source(job(tmp_path / "nope", "o").source)
    (tmp_path / "e").mkdir()
    with pytest.raises(PlanError, match="has no images matching extensions"):
        list_source(job(tmp_path / "e", "o").source)


def test_memory_and_file_urls(tree, tmp_path):
    import fsspec

    mem = fsspec.filesystem("memory")
    mem.pipe_file("/bucket/imgs/x.png", b"1")
    mem.pipe_file("/bucket/imgs/y/z.jpg", b"22")
    items = list_source(job("memory://bucket/imgs", "o").source)
    assert items == [("memory:///bucket/imgs/x.png", "x.png", 1), ("memory:///bucket/imgs/y/z.jpg", "y/z.jpg", 2)]
    items = list_source(job(f"file://{tree}", "o", pattern="*.png").source)
    assert items == [(f"{tree}/a.png", "a.png", 5)]
