import numpy as np
import pytest
import torch

from segflow.config import YoloStage
from segflow.tasks.io.weights import WeightsError
from segflow.tasks.stages.yolo import YoloDetector, load_yolo


def stage(**kw):
    base = dict(kind="yolo", weights="unused", device="cpu", conf=0.0, imgsz=160, max_det=5, batch_size=3)
    base.update(kw)
    return YoloStage(**base)


def test_checkpoint_round_trip_keeps_weights_and_names(tiny_models):
    model = load_yolo(str(tiny_models["yolo"]))
    ckpt = torch.load(tiny_models["yolo"], weights_only=True)
    assert model.model.names == {0: "circle", 1: "square", 2: "triangle"}
    sd = model.model.state_dict()
    k = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 100)
    torch.testing.assert_close(sd[k], ckpt["state_dict"][k].float())


def test_classes_map_to_ontology_and_unknown_are_dropped(tiny_models, rng):
    images = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8) for _ in range(4)]
    ontology = {7: "box", 9: "circle"}  # 'square' renamed to 'box' by class_map, 'triangle' not wanted
    det = YoloDetector(stage(class_map={"square": "box"}), str(tiny_models["yolo"]), ontology)
    assert det.mapped_classes == {"square": 7, "circle": 9}
    everything = YoloDetector(stage(), str(tiny_models["yolo"]), {1: "square", 2: "circle", 3: "triangle"})
    all_dets = everything.detect(images)
    kept = det.detect(images)
    for a, b in zip(all_dets, kept):
        expected = {1: 7, 2: 9}
        want = np.array([expected[c] for c in a.class_ids if c in expected], dtype=np.int64)
        np.testing.assert_array_equal(b.class_ids, want)
        np.testing.assert_allclose(b.boxes, a.boxes[np.isin(a.class_ids, [1, 2])])


def test_ultralytics_pickle_is_refused_with_hint(tmp_path, tiny_models):
    from ultralytics import YOLO

    y = YOLO("yolo11n.yaml")
    path = tmp_path / "ultra.pt"
    torch.save({"model": y.model}, path)  # ultralytics checkpoints pickle the module
    with pytest.raises(WeightsError, match="segflow convert-weights"):
        load_yolo(str(path))


def test_saving_the_yolo_wrapper_or_its_model_gives_the_same_checkpoint(tmp_path):
    from ultralytics import YOLO

    from segflow.tasks.stages.yolo import save_yolo_checkpoint

    torch.manual_seed(0)
    y = YOLO("yolo11n.yaml")
    save_yolo_checkpoint(y, tmp_path / "wrapper.pt", half=False)
    save_yolo_checkpoint(y.model, tmp_path / "model.pt", half=False)
    a, b = (torch.load(tmp_path / n, weights_only=True)["state_dict"] for n in ("wrapper.pt", "model.pt"))
    assert list(a) == list(b) and not any(k.startswith("model.model.") for k in a)
    reloaded = load_yolo(str(tmp_path / "wrapper.pt"))
    torch.testing.assert_close(
        reloaded.model.state_dict()["model.0.conv.weight"], y.model.state_dict()["model.0.conv.weight"]
    )


def test_detecting_leaves_torch_cpu_threads_alone(tiny_models, rng):
    """Ultralytics sets torch's thread count to cores - 1 on CPU predictor setup; the adapter puts it back."""
    from ultralytics.utils import NUM_THREADS
    from ultralytics.utils.torch_utils import select_device

    before = torch.get_num_threads()
    wanted = NUM_THREADS + 1  # differs from what ultralytics would set, on any machine
    try:
        torch.set_num_threads(wanted)
        select_device("cpu", verbose=False)  # negative control: ultralytics itself does change it
        assert torch.get_num_threads() == NUM_THREADS
        torch.set_num_threads(wanted)
        det = YoloDetector(stage(), str(tiny_models["yolo"]), {1: "circle", 2: "square", 3: "triangle"})
        det.detect([rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)])
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_importing_the_adapter_does_not_leave_omp_num_threads_set(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "import os, segflow.tasks.stages.yolo, ultralytics; print(repr(os.environ.get('OMP_NUM_THREADS')))"
    out = (
        subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=str(tmp_path),
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out == "None"
    control = (
        subprocess.run(
            [sys.executable, "-c", "import os, ultralytics; print(repr(os.environ.get('OMP_NUM_THREADS')))"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=str(tmp_path),
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert control == "'1'"  # ultralytics alone sets it: the check above can fail
