"""`segflow demo --video`: synthetic videos with exact tracks, labelled by configs/demo-video.yaml (detector -> SAM
-> ByteTrack), the YouTube-VIS export scored with trackers.eval against the truth."""

from __future__ import annotations

import copy
import json

import pytest

from segflow.flows import cli
from segflow.tasks.evaluate.video_quality import evaluate_vis

pytest.importorskip("av")


def test_video_demo_tracks_the_shapes_and_scores_its_export(prefect_harness, tmp_path, capsys):
    out = tmp_path / "demo"
    # seed 31: not a seed anything was tuned on (the track rule's defaults were set on seed 11)
    # two videos: the first is the gold set the tracks' threshold is fitted on, the second is scored
    args = ["demo", "--video", "--output", str(out), "--seed", "31", "--videos", "2", "--frames", "32"]
    assert cli.main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "HOTA" in printed and "IDF1" in printed and "track precision" in printed

    q = json.loads((out / "tracking_quality.json").read_text())
    truth = json.loads((out / "ground_truth" / "vis.json").read_text())
    gold = json.loads((out / "ground_truth" / "holdout.json").read_text())
    pred = json.loads((out / "out" / "vis" / "instances.json").read_text())
    assert q == evaluate_vis(gold, pred).to_dict()
    assert [v["name"] for v in pred["videos"]] == [v["name"] for v in truth["videos"]]
    assert [v["file_names"] for v in pred["videos"]] == [v["file_names"] for v in truth["videos"]]
    assert q["frames"] == 32 and q["gold_tracks"] == len(gold["annotations"]) > 0
    summary = json.loads((out / "out" / "summary.json").read_text())
    fit = summary["tracks"]["fit"]
    assert fit["tracks"] > 0 and summary["tracks"]["threshold"] == pytest.approx(fit["threshold"], abs=1e-4)
    # on the held-out video (4 true tracks: one missed is recall 0.75); the targets are measured on
    # whole demo runs of fresh seeds (docs/video.md)
    assert q["idf1"] >= 0.85 and q["hota"] >= 0.70, q
    assert q["track_precision"] >= 0.95 and q["track_recall"] >= 0.5, q

    # negative control: the same masks with the tracks' identities swapped halfway score lower
    swapped = copy.deepcopy(pred)
    for vid in {a["video_id"] for a in swapped["annotations"]}:
        anns = [a for a in swapped["annotations"] if a["video_id"] == vid]
        for a, b in zip(anns[0::2], anns[1::2], strict=False):
            h = len(a["segmentations"]) // 2
            a["segmentations"][h:], b["segmentations"][h:] = b["segmentations"][h:], a["segmentations"][h:]
    worse = evaluate_vis(gold, swapped)
    assert worse.idf1 < q["idf1"] - 0.1 and worse.assa < q["assa"] - 0.1
    assert evaluate_vis(gold, gold).to_dict()["hota"] == pytest.approx(1.0)
