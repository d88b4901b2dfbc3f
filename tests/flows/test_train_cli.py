"""`segflow train-demo-models`, end to end with tiny budgets: every step runs (detector, its fine-tune, SAM, the
zoom cycles), the job files get the new sha256 values."""

import shutil
from pathlib import Path

import numpy as np

from segflow.config import SamStage
from segflow.flows import cli
from segflow.tasks.io.weights import sha256_file
from segflow.tasks.stages.sam import SamBoxSegmenter

ROOT = Path(__file__).resolve().parents[2]


def test_train_demo_models_runs_the_zoom_cycles_and_updates_the_job_files(tmp_path, capsys):
    job = tmp_path / "demo.yaml"
    shutil.copyfile(ROOT / "configs" / "demo.yaml", job)
    before = job.read_text()
    models = tmp_path / "models"
    rc = cli.main(
        [
            "train-demo-models",
            "--output",
            str(models),
            "--only",
            "instances",
            "--det-images",
            "8",
            "--det-epochs",
            "1",
            "--det-imgsz",
            "64",
            "--det-finetune-epochs",
            "1",
            "--det-finetune-images",
            "8",
            "--det-finetune-imgsz",
            "64",
            "--sam-minutes",
            "0.02",
            "--sam-scenes",
            "12",
            "--zoom-scenes",
            "12",
            "--sam-zoom-minutes",
            "0.02",
            "0.02",
            "--update-config",
            str(job),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "cycle 1 of 2" in out and "cycle 2 of 2" in out and "detector fine-tuned (cycle 1 of 1)" in out
    assert sorted(p.name for p in models.iterdir()) == ["demo-sam.pt", "demo-yolo.pt"]  # no temporary file left behind
    after = job.read_text()
    for name in ("demo-sam.pt", "demo-yolo.pt"):
        assert f"weights: models/{name}\n    sha256: {sha256_file(models / name)}" in after
    assert after != before and after.count("sha256:") == before.count("sha256:")
    seg = SamBoxSegmenter(
        SamStage(kind="sam", weights=str(models / "demo-sam.pt"), device="cpu", zoom_context=0.25),
        str(models / "demo-sam.pt"),
    )
    logits, _ = seg.box_logits(np.zeros((200, 300, 3), np.uint8), np.array([[20, 20, 80, 60]], np.float32))
    assert logits.shape == (1, 200, 300)


def test_train_demo_models_only_semantic_trains_the_unet_and_updates_its_job(tmp_path, capsys):
    from segflow.config import SemanticStage
    from segflow.tasks.stages.semantic import SemanticSegmenter

    job = tmp_path / "demo-semantic.yaml"
    shutil.copyfile(ROOT / "configs" / "demo-semantic.yaml", job)
    models = tmp_path / "models"
    args = ["train-demo-models", "--output", str(models), "--only", "semantic", "--unet-minutes", "0.005"]
    assert cli.main([*args, "--update-config", str(job)]) == 0
    assert "semantic U-Net trained" in capsys.readouterr().out
    assert sorted(p.name for p in models.iterdir()) == ["demo-unet.pt"]
    assert f"weights: models/demo-unet.pt\n    sha256: {sha256_file(models / 'demo-unet.pt')}" in job.read_text()
    weights = str(models / "demo-unet.pt")
    seg = SemanticSegmenter(
        SemanticStage(kind="semantic", weights=weights, device="cpu", max_side=192), weights, {4: "sky"}
    )
    dets = seg.panoptic([np.zeros((150, 400, 3), np.uint8)])[0]
    assert dets.image_size == (150, 400)


def test_train_demo_models_only_video_fine_tunes_the_video_detector_and_updates_its_job(tmp_path, capsys):
    """`--only video` starts from the demo detector in the output folder and writes demo-video-yolo.pt, the model
    configs/demo-video.yaml names; the job file gets its new sha256."""
    job = tmp_path / "demo-video.yaml"
    shutil.copyfile(ROOT / "configs" / "demo-video.yaml", job)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(ROOT / "configs" / "models" / "demo-yolo.pt", models / "demo-yolo.pt")
    args = ["train-demo-models", "--output", str(models), "--only", "video", "--video-det-epochs", "1"]
    args += ["--video-det-frames", "8", "--det-finetune-imgsz", "64", "--update-config", str(job)]
    assert cli.main(args) == 0
    assert "video detector fine-tuned" in capsys.readouterr().out
    assert sorted(p.name for p in models.iterdir()) == ["demo-video-yolo.pt", "demo-yolo.pt"]
    assert (
        f"weights: models/demo-video-yolo.pt\n    sha256: {sha256_file(models / 'demo-video-yolo.pt')}"
        in job.read_text()
    )
    assert sha256_file(models / "demo-video-yolo.pt") != sha256_file(models / "demo-yolo.pt")
