"""The run report (OUTPUT/report.html): its content against the run's own numbers, its sampling, and the page in
a real browser (headless Chromium), with a broken copy as the negative control."""

import json
import re
import shutil

import numpy as np
import pyarrow as pa
from markupsafe import escape as html_escape  # what the template escapes with (jinja2)
from pycocotools import mask as mask_utils

from segflow.flows import cli
from segflow.flows.label_flow import report_link
from segflow.tasks.evaluate.quality import class_confusion
from segflow.tasks.report import ReportSampler
from segflow.tasks.report.render import VERDICT_TITLES
from tests.support.browser import check_page

SECTIONS = ["summary", "quality", "samples", "previews", "timing", "job"]


def test_demo_report_opens_in_chromium_with_every_image(demo_run, tmp_path):
    report = demo_run / "out" / "report.html"
    shot = tmp_path / "report.png"
    assert check_page(report, shot, SECTIONS) == []
    assert shot.stat().st_size > 50_000  # a full-page screenshot, kept in the test's temp dir

    # negative control: the same page with one image pointing at a file that is not there
    broken = tmp_path / "broken" / "report.html"
    broken.parent.mkdir()
    html = report.read_text()
    first = re.search(r'src="(data:image/[^"]+)"', html).group(1)
    broken.write_text(html.replace(first, "missing.png", 1).replace('<section id="timing">', "<section>", 1))
    problems = check_page(broken, tmp_path / "broken.png", SECTIONS)
    assert any(p.startswith("image not loaded") for p in problems), problems
    assert "section missing: #timing" in problems


def test_report_content_matches_the_run(demo_run):
    out = demo_run / "out"
    summary = json.loads((out / "summary.json").read_text())
    samples = json.loads((out / "report" / "samples.json").read_text())
    html = (out / "report.html").read_text()
    assert summary["outputs"]["report"] == str(out / "report.html")
    # counts per class and verdict are every mask of the run, not the sample
    by_class: dict[str, int] = {}
    for r in samples["counts"]:
        by_class[r["class"]] = by_class.get(r["class"], 0) + r["masks"]
    assert by_class == summary["masks_per_category"]
    for v, n in summary["verdicts"].items():
        assert sum(r["masks"] for r in samples["counts"] if r["verdict"] == v) == n
    # the samples are bounded and each cell is worst-first
    for key, rows in samples["samples"].items():
        cls, verdict = key.split("\t")
        assert 0 < len(rows) <= samples["per_cell"] and {r["category_name"] for r in rows} == {cls}
        if verdict == "novel":  # masks in review for their shape, most unusual first
            assert all(r["verdict"] == "review" and "novel" in r["verdict_reasons"] for r in rows)
            novelty = [r["novelty"] for r in rows]
            assert novelty == sorted(novelty, reverse=True)
        else:
            assert all(r["verdict"] == verdict for r in rows)
            score = [r["calibrated_score"] if r["calibrated_score"] is not None else r["score"] for r in rows]
            assert score == sorted(score, reverse=verdict == "reject")
        assert f'alt="{cls} {html_escape(VERDICT_TITLES[verdict])}"' in html
    # every masks sent to review for its shape has a cell of its own, counted in full
    novel = {c: n for c, n in samples.get("novel", {}).items() if n}
    assert {k.split("\t")[0] for k in samples["samples"] if k.endswith("\tnovel")} == set(novel)
    # failures with reasons, the quality numbers, the timings and the models' sha256
    assert sum(samples["failure_kinds"].values()) == summary["failed_images"] == 2
    q = json.loads((out / "quality.json").read_text())
    assert f"<b>{q['mask_ap50']:.3f}</b><span>mask AP50" in html
    assert f"PQ {q['pq']}" in html and f"mIoU {q['semantic']['miou']}" in html
    job = json.loads((out / "job.json").read_text())
    assert all(st["sha256"] in html for st in job["stages"].values() if st.get("sha256"))
    commits = [json.loads(p.read_text()) for p in (out / "shards").glob("*/_COMMIT*.json")]
    assert commits and all(set(c["timing"]["seconds"]) >= {"read", "detector", "masks", "commit"} for c in commits)
    for c in commits:
        t = c["timing"]
        assert sum(t["seconds"].values()) <= (t["finished_at"] - t["started_at"]) * 1.05 + 0.05
    assert f"<b>{len(commits)}</b><span>shards labelled" in html
    # previews: an image beside its panoptic and semantic maps
    assert len(samples["previews"]) == 6
    assert html.count(f'alt="panoptic {demo_run}') == html.count(f'alt="semantic {demo_run}') == 6


def test_segflow_report_draws_it_again_from_the_manifests(demo_copy, capsys):
    (demo_copy / "report.html").unlink()
    shutil.rmtree(demo_copy / "report")  # as an output finalized before reports existed
    assert cli.main(["report", str(demo_copy)]) == 0
    assert str(demo_copy / "report.html") in capsys.readouterr().out
    html = (demo_copy / "report.html").read_text()
    assert all(f'<section id="{s}">' in html for s in SECTIONS)
    assert cli.main(["report", str(demo_copy / "nothing-here")]) != 0
    assert "error:" in capsys.readouterr().err


def _rows(scores, verdicts, classes, start=0):
    n = len(scores)
    return pa.table(
        {
            "annotation_id": pa.array(range(start, start + n), pa.int64()),
            "image_id": pa.array([1] * n, pa.int64()),
            "image_uri": ["mem://x.png"] * n,
            "width": [8] * n,
            "height": [8] * n,
            "category_name": classes,
            "score": pa.array(scores, pa.float32()),
            "calibrated_score": pa.array([None] * n, pa.float64()),
            "predicted_iou": pa.array([0.9] * n, pa.float32()),
            "verdict": verdicts,
            "verdict_reasons": pa.array([[]] * n, pa.list_(pa.string())),
            "rle_counts": ["0"] * n,
            "prompt_box": pa.array([None] * n, pa.list_(pa.float32())),
        }
    )


def test_sampler_keeps_the_worst_per_class_and_verdict_whatever_the_shard_order():
    rng = np.random.default_rng(0)
    images = pa.table({"image_id": [1], "image_uri": ["mem://x.png"], "status": ["ok"], "error": [None]})
    shards = []
    for s in range(5):
        scores = rng.random(40).round(3).tolist()
        verdicts = rng.choice(["accept", "review", "reject"], 40).tolist()
        classes = rng.choice(["a", "b"], 40).tolist()
        shards.append(_rows(scores, verdicts, classes, start=s * 100))
    picks = []
    for order in (shards, shards[::-1]):
        sampler = ReportSampler(per_cell=4)
        for t in order:
            sampler.add(images, t)
        picks.append(sampler.to_json())
    assert picks[0]["samples"] == picks[1]["samples"]
    everything = pa.concat_tables(shards).to_pylist()
    for key, rows in picks[0]["samples"].items():
        cls, verdict = key.split("\t")
        cell = [r for r in everything if r["category_name"] == cls and r["verdict"] == verdict]
        expect = sorted(cell, key=lambda r: ((-1 if verdict == "reject" else 1) * r["score"], r["annotation_id"]))
        assert [r["annotation_id"] for r in rows] == [r["annotation_id"] for r in expect[:4]]
        assert len(cell) == next(c["masks"] for c in picks[0]["counts"] if (c["class"], c["verdict"]) == (cls, verdict))


def _rle(x0, x1):
    m = np.zeros((10, 20), np.uint8, order="F")
    m[2:8, x0:x1] = 1
    return mask_utils.encode(m)


def test_class_confusion_counts_swaps_misses_and_spurious_labels():
    gold = {(1, 1): [{"rle": _rle(0, 5), "iscrowd": 0}], (1, 2): [{"rle": _rle(10, 15), "iscrowd": 0}]}
    preds = {
        (1, 2): [{"rle": _rle(0, 5), "score": 0.9}],  # the class-1 instance labelled as class 2
        (1, 1): [{"rle": _rle(16, 20), "score": 0.8}],  # a label on nothing
        (1, 3): [{"rle": _rle(10, 15), "score": 0.7, "row": {"verdict": "review"}}],  # not exported: left out
    }
    m = np.array(class_confusion(gold, preds, [1, 2, 3]))
    expect = np.zeros((4, 4), int)
    expect[0, 1] = 1  # gold 1 -> label 2
    expect[1, 3] = 1  # gold 2 missed (its only label is in review)
    expect[3, 0] = 1  # a class-1 label on no gold instance
    np.testing.assert_array_equal(m, expect)
    with_review = np.array(class_confusion(gold, preds, [1, 2, 3], verdicts=("accept", "review")))
    assert with_review[1, 2] == 1 and with_review[1, 3] == 0


def test_report_link_says_how_to_reach_the_page():
    local = report_link("/data/run/report.html")
    assert "](file:///data/run/report.html)" in local
    remote = report_link("s3://bucket/run/report.html")
    assert "aws s3 cp s3://bucket/run/report.html" in remote and "presign" in remote and "](" not in remote


def test_flow_run_links_the_report_as_a_markdown_artifact(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["segflow-segflow-demo-report"]))
        )
    mine = [a for a in found if (demo_run / "out" / "report.html").as_uri() in a.data]  # other demo runs share the key
    assert len(mine) == 1 and mine[0].type == "markdown"
