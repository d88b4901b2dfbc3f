"""Outputs and names other people can write: a symlinked shard folder, names that would be Markdown, label ids past
an image's range, a file name that would leave an export's folder. Built on model-free finished outputs."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from segflow.flows import cli
from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.formats.labels import ExportError
from segflow.tasks.formats.review_model import ReviewedImage, ReviewedLabel
from segflow.tasks.ops.publish import publish
from segflow.tasks.ops.review import apply_review
from segflow.tasks.ops.verify import set_aside
from segflow.tasks.plan.planner import make_plan
from tests.support.outputs import H, W, commit_planned, make_job


def finished(tmp_path, **extra):
    job = make_job(tmp_path, str(tmp_path / "out"), **extra)
    for sid in make_plan(job).shard_ids:
        commit_planned(job, sid)
    finalize(job)
    return job


def test_setting_aside_a_symlinked_shard_folder_moves_the_link_not_its_target(tmp_path):
    job = finished(tmp_path)
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir()
    (elsewhere / "precious.bin").write_bytes(b"keep me")
    shards = tmp_path / "out" / "shards"
    os.symlink(elsewhere, shards / "shard-09999")
    (shards / "shard-09998").mkdir()
    os.symlink(elsewhere / "precious.bin", shards / "shard-09998" / "_COMMIT.json")
    moved = set_aside(job.output, ["shard-09999", "shard-09998"])
    assert (elsewhere / "precious.bin").read_bytes() == b"keep me"  # the target is untouched
    first, second = (tmp_path / "out" / "set_aside" / "shards" / s for s in ("shard-09999", "shard-09998"))
    assert first.is_symlink() and os.readlink(first) == str(elsewhere)
    assert (second / "_COMMIT.json").is_symlink() and moved == [str(first), str(second)]
    assert not (shards / "shard-09999").exists() and not (shards / "shard-09998").exists()


def test_names_in_the_dataset_card_cannot_end_its_blocks_or_add_markup(tmp_path):
    evil = "evil\n```\n# Injected heading\n<script>x</script> | col"
    job = finished(tmp_path, name=evil)
    dest = tmp_path / "pub"
    publish(job.output, str(dest), "v1")
    card = (dest / "v1" / "README.md").read_text()
    lines = card.splitlines()
    head, job_block = lines[: lines.index("## Job")], lines[lines.index("## Job") + 2 :]
    assert lines[0].startswith("# evil \\`\\`\\` # Injected heading") and "&lt;script&gt;" in lines[0]
    assert not any(line.startswith("# Injected") or "<script>" in line for line in head)
    assert job_block and all(line.startswith("    ") for line in job_block if line)  # an indented block: no fence
    assert "Injected heading" in "\n".join(job_block)  # negative control: the name is there, as inert code text


def test_labels_added_past_an_image_s_id_range_are_refused():
    """Ids are image_id * 100000 + k: a k past 99,999 would be the next image's id."""
    full = mask_utils.encode(np.asfortranarray(np.ones((H, W), np.uint8)))["counts"].decode()
    info = {"image_uri": "x", "width": W, "height": H}
    auto = {7 * 100000 + 99_999: {"annotation_id": 7 * 100000 + 99_999, "verdict": "accept"}}
    image = ReviewedImage(7, [ReviewedLabel(None, "circle", full, (H, W))], shown=set())
    with pytest.raises(ExportError, match="image 7: more than 99999 labels"):
        apply_review(image, info, [], auto, {"circle": 1}, {"review_sha256": "s", "reviewed_at": "t"})
    auto = {7 * 100000 + 5: {"annotation_id": 7 * 100000 + 5, "verdict": "accept"}}  # negative control: room left
    image = ReviewedImage(7, [ReviewedLabel(None, "circle", full, (H, W))], shown=set())
    rows, acts = apply_review(image, info, [], auto, {"circle": 1}, {"review_sha256": "s", "reviewed_at": "t"})
    assert acts["added"] == [7 * 100000 + 6]


def test_an_export_never_writes_outside_its_folder_for_a_file_name_from_the_output(tmp_path, capsys):
    job = finished(tmp_path)
    out = tmp_path / "out"
    folder = out / "manifest" / "images.parquet"
    part = sorted(folder.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    names = table["file_name"].to_pylist()
    names[0] = "../../../escaped.png"
    table = table.set_column(table.schema.get_field_index("file_name"), "file_name", pa.array(names))
    pq.write_table(table, part)
    pointer = json.loads((out / "manifest" / "_parts.json").read_text())  # others can rewrite the pointer too
    sid = part.stem.removeprefix("part-")
    pointer["manifest/images.parquet"][sid]["sha256"] = hashlib.sha256(part.read_bytes()).hexdigest()
    (out / "manifest" / "_parts.json").write_text(json.dumps(pointer))
    dest = tmp_path / "exports" / "yolo"
    assert cli.main(["export", job.output, str(dest), "--format", "yolo-seg"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "refusing key" in lines[0] and "Traceback" not in err
    assert not list(tmp_path.rglob("escaped.*"))
