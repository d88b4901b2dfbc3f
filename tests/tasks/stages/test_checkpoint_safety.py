"""No checkpoint runs code or allocates past its tensors: every loader checks a checkpoint's own model description
(an allow-list for ultralytics' yaml; a build on the meta device compared with the tensors for the rest)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from segflow.flows import cli
from segflow.tasks.io.weights import WeightsError
from segflow.tasks.stages.yolo import load_yolo


def _payload(marker) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"


def _hostile_yolo(src, dst, edit):
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt["yaml"])
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("yaml.activation", lambda y, p: y.update(activation=p)),
        ("yaml.head[0].args[0]", lambda y, p: y["head"][0][3].__setitem__(0, p)),
        ("yaml.head[0].module", lambda y, p: y["head"][0].__setitem__(2, "torch_safe_load")),
        ("yaml.backbone[1].args[0]", lambda y, p: y["backbone"][1][3].__setitem__(0, 1 << 30)),
        ("yaml.evil", lambda y, p: y.update(evil=p)),
    ],
)
def test_a_yolo_checkpoint_whose_description_could_run_code_is_refused(tiny_models, tmp_path, where, edit):
    marker = tmp_path / "marker"
    bad = _hostile_yolo(tiny_models["yolo"], tmp_path / "bad.pt", lambda y: edit(y, _payload(marker)))
    with pytest.raises(WeightsError, match="refusing the checkpoint's model description: " + re.escape(where)):
        load_yolo(str(bad))
    assert not marker.exists()


def test_the_allow_list_passes_real_descriptions(tiny_models, tmp_path):
    """Negative control: segflow's own checkpoints (detect and segment) and an activation from the set load."""
    from tests.support.tiny import make_tiny_yolo

    det = make_tiny_yolo(tmp_path / "det.pt", ["a", "b"], cfg="yolo11n.yaml")
    assert load_yolo(str(det)).model.names == {0: "a", 1: "b"}
    relu = _hostile_yolo(tiny_models["yolo"], tmp_path / "relu.pt", lambda y: y.update(activation="nn.ReLU()"))
    assert isinstance(load_yolo(str(relu)).model.model[0].act, torch.nn.ReLU)


def test_a_local_yaml_is_checked_like_a_checkpoint(tmp_path):
    import yaml

    ckpt = torch.load(_first_party_yaml_source(tmp_path), weights_only=True)
    marker = tmp_path / "marker"
    cfg = dict(ckpt["yaml"], activation=_payload(marker))
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(WeightsError, match="yaml.activation"):
        load_yolo(str(path))
    assert not marker.exists()


def _first_party_yaml_source(tmp_path):
    from tests.support.tiny import make_tiny_yolo

    return make_tiny_yolo(tmp_path / "src.pt", ["a"], cfg="yolo11n.yaml")


def test_descriptions_that_ask_for_more_than_their_tensors_are_refused_before_building(tiny_models, tmp_path):
    """SAM, Mask R-CNN, semantic and Mask2Former checkpoints: a description larger than the tensors is refused
    (built on the meta device first), and an unknown architecture name or class is refused by name."""
    sam = torch.load(tiny_models["sam"], weights_only=True)
    sam["arch"] = dict(sam["arch"], encoder_embed_dim=1 << 16)
    torch.save(sam, tmp_path / "sam.pt")
    from segflow.tasks.stages.sam_checkpoint import load_sam

    with pytest.raises(WeightsError, match="do not fit the SAM the checkpoint describes"):
        load_sam(str(tmp_path / "sam.pt"))

    from segflow.tasks.stages.instances import _load_maskrcnn

    mrc = torch.load(tiny_models["maskrcnn"], weights_only=True)
    torch.save(dict(mrc, arch="os.system"), tmp_path / "mrc.pt")
    with pytest.raises(WeightsError, match="arch must be one of"):
        _load_maskrcnn(str(tmp_path / "mrc.pt"))
    torch.save(dict(mrc, names={i: f"c{i}" for i in range(5000)}), tmp_path / "mrc2.pt")
    with pytest.raises(WeightsError, match="do not fit the Mask R-CNN"):
        _load_maskrcnn(str(tmp_path / "mrc2.pt"))

    from segflow.tasks.stages.semantic import load_semantic

    sem = torch.load(tiny_models["semantic"], weights_only=True)
    torch.save(dict(sem, model_class="from_pretrained"), tmp_path / "sem.pt")
    with pytest.raises(WeightsError, match="model_class must name"):
        load_semantic(str(tmp_path / "sem.pt"), None)
    arch = json.loads(sem["arch"])
    torch.save(
        dict(sem, arch=json.dumps(dict(arch, decoder_channels=[1 << 15] * len(arch.get("decoder_channels", [0] * 3))))),
        tmp_path / "sem2.pt",
    )
    with pytest.raises(WeightsError, match="do not fit the model"):
        load_semantic(str(tmp_path / "sem2.pt"), None)

    from segflow.tasks.stages.mask2former import load_mask2former

    m2f = torch.load(tiny_models["mask2former"], weights_only=True)
    cfg = json.loads(m2f["config"])
    torch.save(dict(m2f, config=json.dumps(dict(cfg, hidden_dim=1 << 14))), tmp_path / "m2f.pt")
    with pytest.raises(WeightsError, match="do not fit the Mask2Former"):
        load_mask2former(str(tmp_path / "m2f.pt"))
    # negative control: the untouched checkpoints load
    assert load_sam(str(tiny_models["sam"])) is not None and _load_maskrcnn(str(tiny_models["maskrcnn"]))[1]
    assert load_semantic(str(tiny_models["semantic"]), None) is not None
    assert load_mask2former(str(tiny_models["mask2former"]))[0] is not None


def test_run_and_rerun_of_an_edited_job_json_refuse_the_checkpoint(
    prefect_harness, write_job, image_dir, tiny_models, tmp_path, capfd
):
    """Through `segflow run`, and `segflow rerun` of an output whose job.json someone else edited."""
    marker = tmp_path / "marker"
    bad = _hostile_yolo(tiny_models["yolo"], tmp_path / "bad.pt", lambda y: y.update(activation=_payload(marker)))
    job = write_job(image_dir, tmp_path / "out-bad", mutate=lambda j: j["stages"]["detector"].update(weights=str(bad)))
    assert cli.main(["run", str(job), "--no-progress"]) == 2  # refused before any flow starts
    err = capfd.readouterr().err
    assert "stages.detector.weights" in err and "yaml.activation" in err and "Traceback" not in err, err[-3000:]
    assert not marker.exists() and not (tmp_path / "out-bad").exists()

    out = tmp_path / "out"
    job = write_job(image_dir, out, name="good.yaml")
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    spec = json.loads((out / "job.json").read_text())
    spec["stages"]["detector"]["weights"] = str(bad)  # an output others can write to
    (out / "job.json").write_text(json.dumps(spec))
    capfd.readouterr()
    assert cli.main(["rerun", str(out), "--shards", "shard-00000", "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert "yaml.activation" in err and not marker.exists(), err[-3000:]
    shutil.rmtree(out)
