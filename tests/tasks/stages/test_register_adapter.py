"""A user's package adds a stage kind with register_adapter(): one registry line, its settings model, its class.

The detector defined here boxes the centre of every image; a real flow runs it
before the SAM stage, and the manifest's prompt boxes are its boxes. Before
registration (and after removal) the same job file is refused as an unknown kind.
"""

from typing import Literal

import numpy as np
import pyarrow.dataset as ds
import pytest
from pydantic import Field

from segflow.config import ConfigError, load_config
from segflow.config.schema import StageSettings
from segflow.flows import cli
from segflow.tasks.record import Detections
from segflow.tasks.stages.registry import ADAPTERS, AdapterSpec, register_adapter, unregister_adapter


class CentreBoxStage(StageSettings):
    """Boxes the central part of each image."""

    kind: Literal["centre_box"]
    fraction: float = Field(0.5, gt=0, le=1, description="Side of the box as a fraction of the image's sides.")
    category: str = Field(..., description="Ontology class of every box.")

    def issues(self, name, names, needs_roles):
        return [] if self.category in names else [(f"stages.{name}.category", "not a class of the ontology")]


class CentreBoxDetector:
    def __init__(self, stage, weights_path, ontology):
        assert weights_path is None  # weights layout "none"
        self.stage, self.class_id = stage, {v: k for k, v in ontology.items()}[stage.category]

    def detect(self, images):
        out = []
        for im in images:
            h, w = im.shape[:2]
            f = self.stage.fraction
            box = [w * (1 - f) / 2, h * (1 - f) / 2, w * (1 + f) / 2, h * (1 + f) / 2]
            out.append(Detections((h, w), np.array([box], np.float32), [self.class_id], [0.9]))
        return out


@pytest.fixture()
def centre_box():
    register_adapter("centre_box", AdapterSpec(CentreBoxDetector, CentreBoxStage, "detector", weights="none"))
    yield
    unregister_adapter("centre_box")


def job_with_centre_box(write_job, image_dir, out, **stage):
    def mutate(j):
        j["stages"]["detector"] = {"kind": "centre_box", "category": "square", "fraction": 0.5, **stage}

    return write_job(image_dir, out, mutate=mutate)


def test_a_registered_kind_runs_in_a_real_flow(centre_box, prefect_harness, write_job, image_dir, tmp_path):
    job = job_with_centre_box(write_job, image_dir, tmp_path / "out")
    assert load_config(job).role("detector") == "detector"
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    masks = ds.dataset(str(tmp_path / "out" / "manifest" / "masks.parquet"), format="parquet").to_table()
    assert masks.num_rows > 0 and set(masks["category_name"].to_pylist()) == {"square"}
    for r in masks.select(["prompt_box", "width", "height"]).to_pylist():
        w, h = r["width"], r["height"]
        assert np.allclose(r["prompt_box"], [w / 4, h / 4, 3 * w / 4, 3 * h / 4], atol=1e-3)
    assert set(masks["prompt_model"].to_pylist()) == {masks["prompt_model"][0].as_py()}
    assert masks["prompt_model"][0].as_py().startswith("centre_box:rules@sha256:")


def test_registered_kind_is_validated_by_its_own_model(centre_box, write_job, image_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"stages.detector.fraction: Input should be greater than 0"):
        load_config(job_with_centre_box(write_job, image_dir, tmp_path / "out", fraction=0))
    with pytest.raises(ConfigError, match="stages.detector.category: not a class of the ontology"):
        load_config(job_with_centre_box(write_job, image_dir, tmp_path / "out", category="hexagon"))


def test_unregistered_kind_is_refused_and_registration_is_checked(write_job, image_dir, tmp_path):
    job = job_with_centre_box(write_job, image_dir, tmp_path / "out")
    with pytest.raises(ConfigError, match="stages.detector.kind: unknown stage kind 'centre_box'"):
        load_config(job)
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("sam", ADAPTERS["sam"])
    with pytest.raises(ValueError, match=r"CentreBoxStage.kind must be Literal\['other'\]"):
        register_adapter("other", AdapterSpec(CentreBoxDetector, CentreBoxStage, "detector", weights="none"))
    with pytest.raises(ValueError, match="AdapterSpec.role"):
        AdapterSpec(CentreBoxDetector, CentreBoxStage, "classifier")
    assert "other" not in ADAPTERS
