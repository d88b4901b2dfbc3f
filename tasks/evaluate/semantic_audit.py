"""The semantic audit: a run's class maps (``OUTPUT/semantic/``) against gold label PNGs, and its per-image-and-class
table.

Gold format (job key ``gold_semantic``, any fsspec folder)
----------------------------------------------------------
One single-channel PNG per labelled image ("L" or palette "P"), named after the image with ``.png``
(``photos/img_001.jpg`` -> ``img_001.png``); each byte is the ontology id of the pixel's class, 0 = void
(not scored). The synthetic scenes' ``ground_truth/semantic/`` is such a folder. Images without a gold PNG
are not scored.

What it reports (``quality.json`` -> ``semantic``)
------------------------------------------------
``images``; ``pixel_accuracy`` (correct / non-void gold pixels); ``miou`` and ``per_class_iou`` (IoU of each
class present in gold or prediction, gold void left out); ``confusion``: ``labels`` (ontology names) and
``matrix`` (rows: gold class, columns: predicted class, first column predicted void; pixel counts). The same
matrix, each row divided by its sum, is drawn as ``qc/semantic_confusion.png``.

``manifest/semantic.parquet`` (:func:`class_areas`) has one row per image and class of the class maps:
``image_id``, ``category_id``, ``category_name``, ``pixels``, ``share`` (of the image's pixels).
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from segflow.tasks.documents import SemanticScores
from segflow.tasks.io.storage import join, open_fs, read_bytes, redact
from segflow.tasks.stages.panoptic import SemanticQuality

SEMANTIC_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("category_id", pa.int32()),
        ("category_name", pa.string()),
        ("pixels", pa.int64()),
        ("share", pa.float32()),
    ]
)


def class_areas(images: pa.Table, panoptic: pa.Table, names: dict[int, str]) -> pa.Table:
    """Pixels and share per image and class of a shard's panoptic segments (``area`` summed by class)."""
    if panoptic.num_rows == 0:
        return SEMANTIC_SCHEMA.empty_table()
    g = (
        panoptic.group_by(["image_id", "category_id"])
        .aggregate([("area", "sum")])
        .sort_by([("image_id", "ascending"), ("category_id", "ascending")])
    )
    dims = images.select(["image_id", "width", "height"]).to_pylist()  # failed images have no size (and no segments)
    sizes = {r["image_id"]: (r["width"] or 0) * (r["height"] or 0) for r in dims}
    ids = g["image_id"].to_numpy()
    pixels = g["area_sum"].to_numpy().astype(np.int64)
    total = np.array([sizes.get(int(i), 0) for i in ids], np.float64)
    cats = g["category_id"].to_numpy().astype(np.int32)
    return pa.table(
        {
            "image_id": ids,
            "category_id": cats,
            "category_name": [names.get(int(c), str(c)) for c in cats],
            "pixels": pixels,
            "share": np.divide(pixels, total, out=np.zeros(len(ids)), where=total > 0).astype(np.float32),
        },
        schema=SEMANTIC_SCHEMA,
    )


def read_label_png(data: bytes, where: str) -> np.ndarray:
    """A single-channel label PNG as H x W uint8 (ids as stored: palette indices, not colours)."""
    im = Image.open(io.BytesIO(data))
    if im.mode not in ("L", "P"):
        raise ValueError(f"{where}: a label PNG must have one channel (mode L or P), got mode {im.mode}")
    return np.asarray(im)


class SemanticAudit:
    """Gathers (image id, gold PNG) pairs shard by shard, then scores the run's maps."""

    def __init__(self, gold_dir: str, names: dict[int, str]):
        self.gold_dir, self.names = gold_dir, names
        fs, path = open_fs(gold_dir)
        try:
            listing = fs.ls(path, detail=False)
        except FileNotFoundError:
            raise ValueError(f"gold_semantic: folder {redact(gold_dir)} not found") from None
        self.gold = {PurePosixPath(p).name for p in listing if p.lower().endswith(".png")}
        if not self.gold:
            raise ValueError(f"gold_semantic: no .png label maps in {redact(gold_dir)}")
        self.pairs: list[tuple[int, str]] = []

    def add(self, images: pa.Table) -> None:
        ok = images.filter(pc.equal(images["status"], "ok")).select(["image_id", "file_name"]).to_pylist()
        for r in ok:
            name = PurePosixPath(r["file_name"]).stem + ".png"
            if name in self.gold:
                self.pairs.append((r["image_id"], name))

    def evaluate(self, semantic_dir: str, png_name: Any) -> tuple[SemanticScores, bytes | None]:
        """``(quality.json's "semantic" entry, heat map PNG or None)``; ``png_name(image_id)`` names a run's map."""
        if not self.pairs:
            return {"images": 0, "gold": redact(self.gold_dir)}, None
        sem = SemanticQuality()
        fs_g, _ = open_fs(self.gold_dir)
        fs_p, _ = open_fs(semantic_dir)
        for image_id, name in self.pairs:
            g_url, p_url = join(self.gold_dir, name), join(semantic_dir, png_name(image_id))
            gold = read_label_png(read_bytes(fs_g, open_fs(g_url)[1]), redact(g_url))
            pred = read_label_png(read_bytes(fs_p, open_fs(p_url)[1]), redact(p_url))
            if gold.shape != pred.shape:
                raise ValueError(f"{redact(g_url)}: gold map is {gold.shape}, the run's map of that image {pred.shape}")
            sem.add(gold, pred)
        out: SemanticScores = {"images": len(self.pairs), **sem.summary(self.names), "gold": redact(self.gold_dir)}
        return out, confusion_png(out["confusion"])


def confusion_png(confusion: dict[str, Any]) -> bytes:
    """The confusion matrix, each gold row divided by its sum, as a heat map (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion["matrix"], np.float64)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    gold, pred = confusion["labels"][1:], confusion["labels"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(pred), 1.0 + 0.6 * len(gold)), dpi=110)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            if rows[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{rows[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rows[i, j] > 0.6 else "black",
                )
    ax.set_xticks(range(len(pred)), pred, rotation=45, ha="right")
    ax.set_yticks(range(len(gold)), gold)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("semantic confusion (share of each gold class's pixels)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
