"""Writers that meet lose nothing (segflow.tasks.io.lease): one writer at a time, readers never read a half-replaced
manifest. Real processes race on local disk and on moto's S3 server; every outcome must be valid and complete.
Built on model-free finished outputs (5 images, 60x40, rectangles as masks: tests/support/outputs.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.io.lease import Lease, LeaseHeld, LeaseLost, current_holder, hold
from segflow.tasks.io.storage import open_fs
from segflow.tasks.plan.planner import make_plan
from tests.support.outputs import commit_planned, make_job

ROOT = Path(__file__).resolve().parents[3]


def finished(tmp_path, output, name="unit"):
    job = make_job(tmp_path, output, name=name) if name != "unit" else make_job(tmp_path, output)
    for sid in make_plan(job).shard_ids:
        commit_planned(job, sid)
    finalize(job)
    return job


def where(kind, tmp_path, s3_server, name="out"):
    """A fresh output URL on local disk or on moto's S3 (a clean prefix per test)."""
    if kind == "local":
        return str(tmp_path / name)
    return f"s3://segflow-out/{tmp_path.name}/{name}"


@pytest.fixture(params=["local", "s3"])
def kind(request):
    if request.param == "s3":
        request.getfixturevalue("s3")
    return request.param


def python(code: str, *args: str, wait: bool = True, env: dict | None = None):
    """A real second process (this interpreter), started from the checkout so it can import the test support."""
    cmd = [sys.executable, "-c", code, *args]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})}  # a native crash shows where it happened
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    return subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


CLI = "import sys; from segflow.flows import cli; sys.exit(cli.main(sys.argv[1:]))"


def test_a_second_writer_is_refused_naming_the_holder_and_readers_wait(kind, tmp_path, s3_server):
    out = where(kind, tmp_path, s3_server)
    finished(tmp_path, out)
    with hold(out, "calibrate"):
        assert current_holder(out)["owner"]["command"] == "calibrate"
        with hold(out, "report") as again:  # re-entrant in one process
            assert again.command == "calibrate"
        for args, rc in (
            (["report", out], 1),
            (["export", out, str(tmp_path / "x"), "--format", "coco"], 2),
            (["publish", out, str(tmp_path / "pub")], 1),
        ):
            r = python(CLI, *args)
            lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
            assert r.returncode == rc and len(lines) == 1, (args, r.stderr[-2000:])
            assert (
                f"is being written by `segflow calibrate` (host {os.uname().nodename}, pid {os.getpid()})" in lines[0]
            )
        assert not (tmp_path / "x").exists() and not (tmp_path / "pub").exists()
    assert current_holder(out) is None
    assert python(CLI, "report", out).returncode == 0  # negative control: free again


def test_a_lapsed_lease_is_taken_over_and_its_stalled_holder_stops(kind, tmp_path, s3_server, monkeypatch):
    out = where(kind, tmp_path, s3_server)
    monkeypatch.setenv("SEGFLOW_LEASE_TTL_S", "1")
    stalled = Lease(out, "run")
    stalled.acquire()
    stalled._stop.set()  # its heartbeat stops, as in a process that hangs
    with pytest.raises(LeaseHeld, match="`segflow run`"):
        Lease(out, "import-review").acquire()
    time.sleep(1.3)
    with hold(out, "import-review"):
        with pytest.raises(LeaseLost, match="another command took the output"):
            stalled.check()
    stalled.release()  # a lost lease releases nothing of the new holder's
    assert current_holder(out) is None


def test_a_killed_holder_s_lease_is_free_at_once_on_its_host_and_after_expiry_elsewhere(tmp_path):
    out = str(tmp_path / "out")
    code = (
        "import sys, time; from segflow.tasks.io.lease import hold\n"
        "with hold(sys.argv[1], 'run'):\n    print('held', flush=True); time.sleep(600)\n"
    )
    proc = python(code, out, wait=False, env={"SEGFLOW_LEASE_TTL_S": "600"})
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(LeaseHeld, match=f"pid {proc.pid}"):
        Lease(out, "rerun").acquire()
    proc.kill()  # a crash: the lease file stays, unexpired
    proc.wait()
    with hold(out, "rerun") as lease:  # same host, its process gone: taken at once
        assert lease.generation == 2
    # from another host, a dead process cannot be seen: its lease holds until it expires
    fs, root = open_fs(f"{out}/_lease")
    record = {"token": "x", "owner": {"command": "run", "host": "elsewhere", "pid": proc.pid}, "acquired_at": 0}
    fs.pipe_file(f"{root}/0000000007.json", json.dumps(record | {"expires_at": time.time() + 600}).encode())
    with pytest.raises(LeaseHeld, match="host elsewhere"):
        Lease(out, "rerun").acquire()
    fs.pipe_file(f"{root}/0000000007.json", json.dumps(record | {"expires_at": time.time() - 1}).encode())
    with hold(out, "rerun") as lease:
        assert lease.generation == 8


REVIEW = """
import json, sys
from segflow.flows import cli
out, path, what = sys.argv[1:4]
import pyarrow.dataset as ds
from segflow.tasks.formats.labels import RunLabels
rows = sorted(RunLabels(out).images("all", labelled_only=False), key=lambda im: im.image_id)
im = rows[0] if what == "delete" else rows[1]
shown = [{"id": f"m{m['annotation_id']}-0", "type": "polygonlabels"} for m in im.masks]
result = [] if what == "delete" else [{"id": "new1", "type": "polygonlabels",
    "value": {"points": [[50, 50], [90, 50], [90, 90]], "polygonlabels": ["square"]}}]
task = {"id": 1, "data": {"segflow_image_id": im.image_id}, "predictions": [{"result": shown}],
        "annotations": [{"id": 1, "result": result}]}
with open(path, "w") as f:
    json.dump([task], f)
print(im.image_id, [m["annotation_id"] for m in im.masks], flush=True)
sys.stdin.readline()  # both processes start importing at once
sys.exit(cli.main(["import-review", out, path, "--format", "label-studio", "--json"]))
"""


def _reviewed(fs, out, version):
    _, root = open_fs(f"{out}/reviews/{version}")
    tables = [pq.read_table(fs.open(p, "rb")) for p in sorted(fs.find(f"{root}/masks.parquet"))]
    return pa.concat_tables(tables).to_pylist()


def test_two_review_imports_at_once_lose_nothing(kind, tmp_path, s3_server):
    out = where(kind, tmp_path, s3_server)
    finished(tmp_path, out)
    procs = {w: python(REVIEW, out, str(tmp_path / f"{w}.json"), w, wait=False) for w in ("delete", "add")}
    picked = {}
    for w, p in procs.items():
        image, anns = p.stdout.readline().split(" ", 1)
        picked[w] = (int(image), json.loads(anns))
    for p in procs.values():  # release both at once
        p.stdin.write("go\n")
        p.stdin.flush()
    results = {w: _finish(p) for w, p in procs.items()}
    ok = [w for w, (rc, _, _) in results.items() if rc == 0]
    for rc, _, err in results.values():
        if rc != 0:  # refused: one line naming the holder, nothing of it written
            lines = [x for x in err.splitlines() if x.startswith("error:")]
            assert len(lines) == 1 and "is being written by `segflow import-review`" in lines[0], (rc, err[-3000:])
    assert ok, results
    fs, _ = open_fs(out)
    versions = sorted(p.rstrip("/").rsplit("/", 2)[-2] for p in fs.glob(f"{open_fs(out)[1]}/reviews/*/_DONE.json"))
    assert versions == [f"v{i + 1:04d}" for i in range(len(ok))]
    latest = {r["annotation_id"]: r for r in _reviewed(fs, out, versions[-1])}
    if "delete" in ok:  # the deletion is in the latest version, whichever import came last
        assert not set(picked["delete"][1]) & set(latest)
    if "add" in ok:
        added = [r for r in latest.values() if r["review_action"] == "added"]
        assert [r["image_id"] for r in added] == [picked["add"][0]]
    for v in versions:  # every version complete: its changes name the file it came from, its rows match its COCO
        _, root = open_fs(f"{out}/reviews/{v}")
        changes = json.loads(fs.cat_file(f"{root}/changes.json"))
        assert changes["review_sha256"] == hashlib.sha256(fs.cat_file(f"{root}/review.json")).hexdigest()
        coco = json.loads(fs.cat_file(f"{root}/coco/instances.json"))
        assert len(coco["annotations"]) == len(_reviewed(fs, out, v)) == changes["labels"]


def _finish(p):
    p.stdin.close()
    out, err = p.stdout.read(), p.stderr.read()
    p.wait(timeout=300)
    return p.returncode, out, err


FINALIZE_LOOP = """
import json, os, sys, time
from segflow.config.schema import JobConfig
from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.io.lease import LeaseHeld
from segflow.tasks.plan.planner import load_plan
from segflow.tasks.io.storage import open_fs
from tests.support.outputs import commit_planned
out, rounds, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fs, p = open_fs(out + "/job.json")
job = JobConfig.model_validate(json.loads(fs.cat_file(p)))
done = refused = 0
for g in range(first, first + rounds):
    for sid in load_plan(out)["shard_ids"]:  # a redo of every shard: 1 or 2 masks per image, by round
        commit_planned(job, sid, k=1 + g % 2, generation=g)
    try:
        finalize(job)
        done += 1
    except LeaseHeld:
        refused += 1
    time.sleep(0.2)
print(json.dumps({"done": done, "refused": refused}), flush=True)
os._exit(0)  # the work is judged above; pyarrow's thread pools can abort in interpreter teardown (seen 2 in ~10 CIs)
"""

EXPORT_LOOP = """
import json, os, sys, time
from segflow.flows import cli
out, dest, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = []
for i in range(rounds):
    rc = cli.main(["export", out, f"{dest}/{i}", "--format", "coco"])
    seen.append(rc)
print(json.dumps(seen), flush=True)
os._exit(0)  # as above: no teardown
"""


def test_finalizes_and_exports_racing_never_mix_generations(kind, tmp_path, s3_server):
    """Two finalizing writers and a reader at once: each export holds one finalize's labels, whole (5 or 10 masks,
    never a mix of shards from two finalizes), or is refused with one line; the writers take turns."""
    out = where(kind, tmp_path, s3_server)
    finished(tmp_path, out)
    dest = str(tmp_path / "exports")
    writers = [python(FINALIZE_LOOP, out, "4", str(first), wait=False) for first in (1, 11)]
    reader = python(EXPORT_LOOP, out, dest, "12", wait=False)
    results = [_finish(p) for p in [*writers, reader]]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    done = [json.loads(o.strip().splitlines()[-1]) for _, o, _ in results[:2]]
    assert sum(d["done"] for d in done) >= 1 and sum(d["done"] + d["refused"] for d in done) == 8
    codes = json.loads(results[2][1].strip().splitlines()[-1])
    refusals = [line for line in results[2][2].splitlines() if line.startswith("error:")]
    assert len(refusals) == codes.count(2) and all(
        "is being written by `segflow finalize`" in line or "does not match the manifest's pointer" in line
        for line in refusals
    ), refusals
    for i, rc in enumerate(codes):
        path = Path(dest) / str(i) / "instances.json"
        if rc == 0:
            doc = json.loads(path.read_text())
            assert len(doc["annotations"]) in (5, 10), len(doc["annotations"])
        else:
            assert not path.exists()
    # the output is whole and verifies
    assert python(CLI, "verify", out).returncode == 0


PUBLISH = """
import sys
from segflow.flows import cli
sys.stdin.readline()
sys.exit(cli.main(["publish", sys.argv[1], sys.argv[2], "--version", "v1"]))
"""


def test_two_publishers_of_one_version_leave_one_whole_version(kind, tmp_path, s3_server):
    outs = [where(kind, tmp_path, s3_server, name=f"out{i}") for i in (1, 2)]
    for i, out in enumerate(outs):  # two runs of other images: other content under one version name
        (tmp_path / f"src{i}").mkdir()
        finished(tmp_path / f"src{i}", out)
    dest = where(kind, tmp_path, s3_server, name="datasets")
    procs = [python(PUBLISH, out, dest, wait=False) for out in outs]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [_finish(p) for p in procs]
    winners = [i for i, (rc, _, _) in enumerate(results) if rc == 0]
    assert len(winners) == 1, results
    (loser,) = [r for r in results if r[0] != 0]
    assert "is being written by `segflow publish`" in loser[2] or "already exists" in loser[2], loser[2][-2000:]
    fs, root = open_fs(f"{dest}/v1")
    sums = fs.cat_file(f"{root}/SHA256SUMS").decode().splitlines()
    for line in sums:  # every file of the version is there and whole
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256(fs.cat_file(f"{root}/{rel}")).hexdigest() == digest, rel
    record = json.loads(fs.cat_file(f"{root}/_PUBLISHED.json"))
    src_fs, src_root = open_fs(outs[winners[0]])
    assert record["commits_digest"] == json.loads(src_fs.cat_file(f"{src_root}/summary.json"))["commits_digest"]


def test_two_runs_of_one_output_at_once_leave_one_whole_run(prefect_harness, write_job, image_dir, tmp_path):
    """`segflow run` twice at once (a double-clicked deployment): one labels, the other is refused naming it (or,
    started after the first finished, finds everything committed); the output verifies either way."""
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    job = write_job(image_dir, out)
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "SEGFLOW_DEBUG": "0"}
    code = "import sys; from segflow.flows import cli; sys.stdin.readline(); sys.exit(cli.main(sys.argv[1:]))"
    procs = [python(code, "run", str(job), "--no-progress", wait=False, env=env) for _ in range(2)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [_finish(p) for p in procs]
    assert [rc for rc, _, _ in results].count(0) >= 1, [r[2][-2000:] for r in results]
    for rc, _, err in results:
        if rc != 0:
            lines = [x for x in err.splitlines() if x.startswith("error:")]
            assert len(lines) == 1 and "is being written by `segflow run`" in lines[0], err[-2000:]
    assert python(CLI, "verify", str(out)).returncode == 0
    commits = list(out.glob("shards/*/_COMMIT*.json"))
    assert len(commits) == len(json.loads((out / "plan" / "plan.json").read_text())["shard_ids"])  # one each
    assert not (out / "_lease").exists()


def test_an_export_into_the_output_takes_its_lease(tmp_path):
    """An export whose destination is inside the output writes into it: it holds the lease like any writer."""
    out = str(tmp_path / "out")
    finished(tmp_path, out)
    with hold(out, "import-review"):
        r = python(CLI, "export", out, f"{out}/exports/coco", "--format", "coco")
        assert r.returncode == 2 and "is being written by `segflow import-review`" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out" / "exports").exists()
    r = python(CLI, "export", out, f"{out}/exports/coco", "--format", "coco")
    assert r.returncode == 0 and (tmp_path / "out" / "exports" / "coco" / "instances.json").exists(), r.stderr[-2000:]
    assert not (tmp_path / "out" / "_lease").exists()  # released
