"""`segflow verify` finds what is wrong with an output, on local disk and on moto's S3 server.

Each damage is done to a finished output built through the commit and
finalize code (no models); a clean output verifies with exit 0 and every
damaged copy with exit 1 naming the shard and file.
"""

import json

from segflow.flows import cli
from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.io.storage import open_fs
from segflow.tasks.ops.verify import verify
from segflow.tasks.plan.planner import iter_plan, make_plan
from tests.support.outputs import add_unplanned_shard, commit_planned, damage, make_job, point_at_missing_attempt


def finished(tmp_path, output):
    job = make_job(tmp_path, output)
    commits = {s: commit_planned(job, s) for s in make_plan(job).shard_ids}
    finalize(job)
    return job, commits


CASES = [
    ("flip", "masks", "sha256"),
    ("truncate", "images", "size"),
    ("delete", "masks", "missing (named by the commit record)"),
]


def check_cases(job, commits, capsys):
    out = job.output
    assert cli.main(["verify", out, "--no-progress"]) == 0
    assert "3 planned shards, 0 problem(s)" in capsys.readouterr().out
    fs, _ = open_fs(out)
    for (how, name, expected), sid in zip(CASES, sorted(commits), strict=True):
        _, path = open_fs(f"{out}/{commits[sid]['files'][name]['path']}")
        damage(fs, path, how)
        found = [p for p in verify(out) if p.shard_id == sid]
        assert found and expected in found[0].problem and found[0].file == commits[sid]["files"][name]["path"]
    assert cli.main(["verify", out, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {p["shard_id"] for p in report["problems"]} == set(commits)
    # a commit record pointing at an attempt that is not there, and a shard folder the plan does not name
    sid = sorted(commits)[0]
    point_at_missing_attempt(fs, out, sid)
    add_unplanned_shard(fs, out)
    problems = [str(p) for p in verify(out)]
    assert any(f"shards/{sid}/attempts/gone/images.parquet: missing" in p for p in problems)
    assert any(p.startswith("shard-09999 shards/shard-09999: extra") for p in problems)


def test_verify_local_output(tmp_path, capsys):
    job, commits = finished(tmp_path, str(tmp_path / "out"))
    check_cases(job, commits, capsys)


def test_verify_s3_output(s3, tmp_path, capsys):
    job, commits = finished(tmp_path, "s3://segflow-out/verify-run")
    check_cases(job, commits, capsys)


def test_verify_sees_a_changed_manifest_part_and_a_stale_summary(tmp_path):
    job, commits = finished(tmp_path, str(tmp_path / "out"))
    sid = sorted(commits)[1]
    part = tmp_path / "out" / "manifest" / "masks.parquet" / f"part-{sid}.parquet"
    part.write_bytes(part.read_bytes()[:-10])
    (tmp_path / "out" / "manifest" / "masks.parquet" / "part-shard-00042.parquet").write_bytes(b"x")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (tmp_path / "out" / "summary.json").write_text(json.dumps(dict(summary, commits_digest="0" * 64)))
    problems = [str(p) for p in verify(str(tmp_path / "out"))]
    assert any(p.startswith(f"{sid} manifest/masks.parquet/part-{sid}.parquet: size") for p in problems)
    assert any("part-shard-00042.parquet: extra" in p for p in problems)
    assert any(p.startswith("summary.json: the exports were built from other commits") for p in problems)


def test_verify_refuses_a_folder_without_a_plan(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert "no plan under" in capsys.readouterr().err


def test_a_pending_shard_is_reported_missing(tmp_path):
    job = make_job(tmp_path, str(tmp_path / "out"))
    ids = make_plan(job).shard_ids
    commit_planned(job, ids[0])
    problems = [str(p) for p in verify(job.output)]
    assert problems == [
        f"{ids[1]}: missing: planned but not committed",
        f"{ids[2]}: missing: planned but not committed",
    ]


def check_redo_generations(job, commits):
    """A redo commits the next generation create-if-absent: one winner of two, the old commit valid until then."""
    from segflow.tasks.ops.status import shard_states
    from segflow.tasks.shard.commit import read_commit

    sid = sorted(commits)[0]
    fs, _ = open_fs(job.output)
    _, path = open_fs(f"{job.output}/{commits[sid]['files']['masks']['path']}")
    damage(fs, path, "flip")
    assert [p.shard_id for p in verify(job.output)] == [sid]  # the committed file (its manifest part is a copy)
    assert read_commit(job.output, sid)["attempt"] == commits[sid]["attempt"]  # still the valid commit
    first = commit_planned(job, sid, generation=1)
    second = commit_planned(job, sid, generation=1)  # a concurrent redo of the same generation loses
    assert first["generation"] == 1 and second["attempt"] == first["attempt"]
    assert read_commit(job.output, sid)["attempt"] == first["attempt"]
    attempts = fs.ls(open_fs(f"{job.output}/shards/{sid}/attempts")[1], detail=False)
    assert len(attempts) == 2  # the damaged generation 0 and the winner; the loser removed its attempt
    assert {s["shard_id"]: s["attempt"] for s in shard_states(job.output)}[sid] == first["attempt"]
    assert [str(p) for p in verify(job.output)][0].startswith("summary.json: the exports were built from other")
    finalize(job)
    assert list(verify(job.output)) == []


def test_redo_supersedes_a_damaged_commit_locally(tmp_path):
    check_redo_generations(*finished(tmp_path, str(tmp_path / "out")))


def test_redo_supersedes_a_damaged_commit_on_s3(s3, tmp_path):
    check_redo_generations(*finished(tmp_path, "s3://segflow-out/redo-run"))


def test_verify_of_a_300_shard_output_streams_in_bounded_memory(tmp_path):
    """A clean 300-shard output (synthetic rows, through the commit and finalize code) verifies with the same
    peak of traced memory as a 30-shard one: files are hashed in chunks and shards checked one at a time."""
    import tracemalloc

    def build(root, n):
        root.mkdir()
        job = make_job(root, str(root / "out"), shard_size=1)
        png = (root / "src" / "0.png").read_bytes()
        for i in range(5, n):
            (root / "src" / f"{i}.png").write_bytes(png)
        make_plan(job)
        by_shard = {}
        for row in iter_plan(job.output):  # the plan read once, not once per shard
            by_shard.setdefault(row["shard_id"], []).append(row)
        for s, rows in by_shard.items():
            commit_planned(job, s, rows=rows)
        finalize(job)
        return job

    peaks = {}
    for n in (30, 300):
        job = build(tmp_path / str(n), n)
        tracemalloc.start()
        problems = list(verify(job.output))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert problems == []
    assert peaks[300] < 1.5 * peaks[30], peaks  # 10x the shards, not 10x the memory
