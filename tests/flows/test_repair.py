"""Every kind of damage `segflow verify` names is repaired by `segflow rerun --corrupt`, on local disk and on moto's
S3 server, through real Prefect runs; the repaired output equals the clean run it was before the damage."""

import json

import pyarrow.dataset as ds
import pytest

from segflow.flows import cli
from segflow.tasks.io.storage import open_fs
from segflow.tasks.ops.verify import verify
from segflow.tasks.plan.planner import load_plan
from segflow.tasks.shard.commit import read_commit
from tests.support.outputs import add_unplanned_shard, damage, point_at_missing_attempt

COLUMNS = {
    "masks": ["annotation_id", "image_id", "category_id", "score", "rle_counts", "bbox", "area", "verdict"],
    "images": ["image_id", "file_name", "status", "error", "width", "height", "num_masks"],
}


def manifest(fs, output: str, name: str):
    _, path = open_fs(f"{output}/manifest/{name}.parquet")
    key = "annotation_id" if name == "masks" else "image_id"
    return ds.dataset(path, filesystem=fs, format="parquet").to_table().sort_by(key).select(COLUMNS[name])


def damage_five_ways(fs, output: str, shard_ids: list[str]) -> dict[str, str]:
    """Five kinds of damage, one per shard (the last one an extra folder the plan does not name): what verify says."""
    a, b, c, d = shard_ids[:4]
    files = {sid: read_commit(output, sid)["files"] for sid in (a, b, c, d)}

    def path(sid, name):
        return open_fs(f"{output}/{files[sid][name]['path']}")[1]

    damage(fs, path(a, "masks"), "flip")
    damage(fs, path(b, "images"), "truncate")
    damage(fs, path(c, "masks"), "delete")
    point_at_missing_attempt(fs, output, d)  # the record names an attempt that is not there
    add_unplanned_shard(fs, output, record=b'{"shard_id": "shard-09999"}')
    return {a: "sha256", b: "size", c: "missing", d: "attempts/gone/images.parquet: missing", "shard-09999": "extra"}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_each_damage_is_found_and_rerun_corrupt_repairs_it_to_the_clean_run(
    where, request, prefect_harness, write_job, image_dir, tmp_path, capsys
):
    if where == "s3":
        request.getfixturevalue("s3")
        output = "s3://segflow-out/repair"
    else:
        output = str(tmp_path / "out")
    job = write_job(image_dir, output, shard_size=4)
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    fs, _ = open_fs(output)
    clean = {name: manifest(fs, output, name) for name in COLUMNS}
    shard_ids = list(load_plan(output)["shard_ids"])
    attempts = {sid: read_commit(output, sid)["attempt"] for sid in shard_ids}
    expected = damage_five_ways(fs, output, shard_ids)

    found = {}
    for p in verify(output):
        found.setdefault(p.shard_id, []).append(str(p))
    for sid, what in expected.items():
        assert any(what in p for p in found.get(sid, [])), (sid, found.get(sid))
    assert cli.main(["verify", output, "--no-progress"]) == 1
    capsys.readouterr()

    assert cli.main(["rerun", output, "--corrupt", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"labelling again: {', '.join(shard_ids[:4])}" in printed
    assert f"shard-09999 is not a shard of the plan: moved to {output}/set_aside/shards/shard-09999" in printed
    assert list(verify(output)) == []
    for name in COLUMNS:
        assert manifest(fs, output, name).equals(clean[name]), name
    for sid in shard_ids:  # the damaged shards are a new generation; the others were not touched
        rec = read_commit(output, sid)
        assert (rec["generation"], rec["attempt"] == attempts[sid]) == ((1, False) if sid in expected else (0, True))
    _, kept = open_fs(f"{output}/set_aside/shards/shard-09999/_COMMIT.json")
    assert json.loads(fs.cat_file(kept)) == {"shard_id": "shard-09999"}  # set aside, not deleted
    if where == "local":  # a named shard, labelled again although nothing is wrong with it; an unknown one refused
        sid = shard_ids[-1]
        assert cli.main(["rerun", output, "--shards", sid, "--no-progress"]) == 0
        assert read_commit(output, sid)["generation"] == 1 and list(verify(output)) == []
        for name in COLUMNS:
            assert manifest(fs, output, name).equals(clean[name]), name
        assert cli.main(["rerun", output, "--shards", f"{sid},shard-77777"]) == 2
        assert "not shards of the plan" in capsys.readouterr().err
