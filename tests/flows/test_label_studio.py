"""The review round trip through a real Label Studio server: export the review band, a reviewer works in Label
Studio (through label-studio-sdk: accepts, relabels, deletes, moves and adds masks), the project's JSON export comes
back through `segflow import-review`, and the new version holds exactly the reviewer's changes.

The server runs from its own venv (tests/support/setup_label_studio.sh, run by the README's test command: Label
Studio pins versions that conflict with segflow's dependencies) on 127.0.0.1, with a data dir copied from a
template migrated once; the reviewer is tests/support/ls_reviewer.py, run by that venv's Python.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from segflow.flows import cli
from segflow.tasks import rle
from segflow.tasks.formats.polygons import polygons_to_rle, rle_to_polygons

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("SEGFLOW_LABEL_STUDIO_HOME", ROOT / ".label-studio"))
EMAIL, PASSWORD = "reviewer@example.com", "segflow-review-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    exe, template = HOME / "venv" / "bin" / "label-studio", HOME / "template"
    if not exe.exists() or not (template / "label_studio.sqlite3").exists():
        pytest.skip(f"no Label Studio in {HOME}: run `bash tests/support/setup_label_studio.sh` (the README does)")
    data = tmp_path_factory.mktemp("label-studio") / "data"
    shutil.copytree(template, data)
    port = _free_port()
    log = open(data.parent / "server.log", "w")  # closed at teardown
    env = dict(
        os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data), DJANGO_DB="sqlite", SENTRY_DSN="", FRONTEND_SENTRY_DSN=""
    )
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
        + ["--username", EMAIL, "--password", PASSWORD],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if b"UP" in r.read():
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"Label Studio did not start: {(data.parent / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def test_a_reviewer_in_label_studio_changes_exactly_what_comes_back(label_studio, demo_copy, tmp_path, capsys):
    out = demo_copy
    assert cli.main(["export", str(out), str(tmp_path / "ls"), "--format", "label-studio"]) == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    auto = {r["annotation_id"]: r for r in ds.dataset(str(out / "manifest" / "masks.parquet")).to_table().to_pylist()}

    def masks_of(task):
        return sorted({int(r["id"][1:].split("-")[0]) for r in task["predictions"][0]["result"]})

    edited = next(t for t in tasks if len(masks_of(t)) >= 3)
    accepted = next(t for t in tasks if t is not edited)
    relabel, delete, move = masks_of(edited)[:3]
    new_class = next(n for n in ("circle", "square", "triangle") if n != auto[relabel]["category_name"])
    square = [[2.0, 2.0], [12.0, 2.0], [12.0, 12.0], [2.0, 12.0]]  # percent of the image
    plan = {
        str(edited["data"]["segflow_image_id"]): [
            {"op": "relabel", "mask": relabel, "label": new_class},
            {"op": "delete", "mask": delete},
            {"op": "move", "mask": move, "dx": 3.0, "dy": 0.0},
            {"op": "add", "label": "circle", "points": square},
        ],
        str(accepted["data"]["segflow_image_id"]): [],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    export_file = tmp_path / "label-studio-export.json"
    subprocess.run(
        [str(HOME / "venv" / "bin" / "python"), str(ROOT / "tests" / "support" / "ls_reviewer.py"), label_studio]
        + [EMAIL, PASSWORD, str(tmp_path / "ls" / "tasks.json"), str(tmp_path / "ls" / "labeling-config.xml")]
        + [str(tmp_path / "plan.json"), str(export_file)],
        check=True,
        timeout=180,
    )
    exported = json.loads(export_file.read_text())
    assert len(exported) == len(tasks) and sum(bool(t["annotations"]) for t in exported) == 2

    capsys.readouterr()
    assert cli.main(["import-review", str(out), str(export_file), "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    ids = changes["annotation_ids"]
    assert ids["relabelled"] == [relabel] and ids["deleted"] == [delete] and ids["reshaped"] == [move]
    assert len(ids["added"]) == 1
    shown = masks_of(edited) + masks_of(accepted)
    assert sorted(ids["kept"]) == sorted(set(shown) - {relabel, delete, move})

    new = {
        r["annotation_id"]: r
        for r in ds.dataset(str(out / "reviews" / "v0001" / "masks.parquet")).to_table().to_pylist()
    }
    assert new[relabel]["category_name"] == new_class and new[relabel]["rle_counts"] == auto[relabel]["rle_counts"]
    assert delete not in new
    h, w = auto[move]["height"], auto[move]["width"]
    moved = polygons_to_rle([p + [0.03 * w, 0] for p in rle_to_polygons(auto[move]["rle_counts"], h, w)], h, w)
    got, want = rle.decode(new[move]["rle_counts"], h, w), rle.decode(moved, h, w)
    assert new[move]["source"] == "human" and (got & want).sum() / (got | want).sum() > 0.99
    (added,) = ids["added"]
    box = rle.decode(polygons_to_rle([np.array(square) * [w / 100, h / 100]], h, w), h, w)
    assert new[added]["source"] == "human" and np.array_equal(rle.decode(new[added]["rle_counts"], h, w), box)
    assert all(new[a]["rle_counts"] == auto[a]["rle_counts"] and new[a]["checked"] for a in ids["kept"])
    # an image nobody reviewed: its accepted labels as they were, unchecked
    other = next(t for t in tasks if t not in (edited, accepted))
    for a in masks_of(other):
        if auto[a]["verdict"] == "accept":
            assert new[a]["rle_counts"] == auto[a]["rle_counts"] and not new[a]["checked"]
        else:
            assert a not in new  # its review-band labels await a reviewer
