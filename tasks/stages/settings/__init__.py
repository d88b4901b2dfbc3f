"""Settings every stage kind builds on (pydantic only: the job schema and the adapters import these, nothing
heavy). A kind's own model lives beside its adapter's module: ``settings/<adapter module>.py``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ModelStageSettings", "StageSettings", "Strict", "Tiled", "TilesConfig", "label_map_issues"]

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSettings(Strict):
    """Settings every stage has. A stage kind's model may add ``issues(name, ontology_names, needs_roles)``:
    checks against the ontology and its input stages, as ``(key.path, message)`` pairs."""

    if TYPE_CHECKING:  # every kind's model declares it, as Literal[<kind>] (a field here would reorder theirs)
        kind: str

    needs: list[str] = Field(default_factory=list, description="Names of the stages this stage consumes.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N', 'mps'.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", v):
            raise ValueError(f"unknown device {v!r}; use auto, cpu, cuda, cuda:N or mps")
        return v


class ModelStageSettings(StageSettings):
    weights: str = Field(..., description="Weights file: local path or any fsspec URL.")
    sha256: str | None = Field(None, description="Expected sha256 of the weights file; checked before loading.")
    batch_size: int = Field(8, ge=1, description="Images per model call.")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.match(v):
            raise ValueError("must be 64 hexadecimal characters")
        return None if v is None else v.lower()


class TilesConfig(Strict):
    """Sliced inference for large images (docs/tiles.md): the model over overlapping windows at native resolution,
    merged back."""

    size: int = Field(640, ge=32, description="Window side in pixels of the image (native resolution).")
    overlap: float = Field(0.2, ge=0.0, lt=0.9, description="Fraction of a window's side shared with its neighbour.")
    whole_image: bool = Field(
        True, description="Also run the model on the whole image at its input size (objects larger than a window)."
    )
    min_side: int | None = Field(
        None, ge=1, description="Tile only images whose longer side exceeds this; default 1.5 x size."
    )
    merge: Literal["greedy", "nms"] = Field(
        "greedy",
        description="Across windows: `greedy` unites overlapping detections of a class (boxes and masks: an object "
        "cut by a window edge comes back whole); `nms` keeps the best of them.",
    )
    match: Literal["ios", "iou"] = Field(
        "ios", description="What overlapping means: intersection over the smaller box (`ios`) or IoU."
    )
    match_threshold: float = Field(0.5, gt=0.0, le=1.0, description="Overlap at which two detections are one.")


class Tiled(BaseModel):
    """A stage that can run over windows of large images (detectors and instance labelers)."""

    tiles: TilesConfig | Literal["auto"] | None = Field(
        None,
        description="Run over overlapping windows of large images at native resolution (`{size, overlap, "
        "whole_image, ...}`), or `auto`: windows of twice the model's input size on images more than three times "
        "as large as it. Default: the whole image at the model's input size.",
    )

    def input_size(self) -> int:
        """The side the model sees an image at (what `tiles: auto` scales from)."""
        return 640


def label_map_issues(name: str, label_map: dict[str, str], unmapped: str, names: set[str]) -> list[tuple[str, str]]:
    """A model-label mapping's targets must be ontology classes (``unmapped``: or 'drop')."""
    out = []
    if unmapped != "drop" and unmapped not in names:
        out.append((f"stages.{name}.unmapped", f"{unmapped!r} is not a class of the ontology (or use 'drop')"))
    for model_label, onto_name in label_map.items():
        if onto_name not in names:
            out.append((f"stages.{name}.label_map.{model_label}", f"{onto_name!r} is not a class of the ontology"))
    return out
