"""Settings of the ``semantic`` stage (:mod:`segflow.tasks.stages.semantic`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings, label_map_issues

__all__ = ["SemanticStage"]


class SemanticStage(ModelStageSettings):
    """Semantic model: a class for every pixel (U-Net family via segmentation-models-pytorch, or transformers
    SegFormer / UperNet); sliding windows over large images; see tasks/stages/semantic.py."""

    kind: Literal["semantic"]
    weights: str = Field(
        ...,
        description="A segflow semantic checkpoint file, a save_pretrained directory (smp or transformers), or "
        "hub:<org>/<name> read from the local Hugging Face cache (never downloaded at run time).",
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the checkpoint file (of model.safetensors for a directory or hub id)."
    )
    batch_size: int = Field(4, ge=1, description="Windows per forward pass.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Model dtype.")
    tile: int | None = Field(
        None, ge=32, description="Window side in pixels (default: the model's input size); larger images are tiled."
    )
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="Share of a window its neighbour overlaps.")
    max_side: int | None = Field(
        None, ge=32, description="Scale larger images down to this long side first (logits are scaled back up)."
    )
    labels: list[str] | None = Field(
        None, description="Model class names in index order, for smp directories (their config has none)."
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Model label -> ontology class name. Other labels map by equal name, else to `unmapped`.",
    )
    unmapped: str = Field("drop", description="'drop' (void), or the ontology class name that takes other labels.")
    ignore: list[str] = Field(default_factory=list, description="Model labels whose pixels become void.")
    preview: bool = Field(
        False,
        description="Also write OUTPUT/semantic/preview/<image_id>.jpg: this stage's class map blended over the "
        "image (long side at most 1024 px), for eyes only.",
    )

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        return label_map_issues(name, self.label_map, self.unmapped, names)
