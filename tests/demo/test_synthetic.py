import json

import numpy as np
from PIL import Image

from segflow.demo.synthetic import CATEGORIES, write_scene_set
from segflow.tasks import rle
from segflow.tasks.io.images import decode_image


def test_scene_set_is_deterministic_and_varied(tmp_path):
    a = write_scene_set(tmp_path / "a", 9, seed=11, size_range=(200, 600))
    b = write_scene_set(tmp_path / "b", 9, seed=11, size_range=(200, 600))
    for (na, _sa), (nb, _sb) in zip(a, b):
        assert na == nb and (tmp_path / "a" / na).read_bytes() == (tmp_path / "b" / nb).read_bytes()
    shapes = [s.pixels.shape[:2] for _, s in a]
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    assert all(200 <= min(h, w) and max(h, w) <= 600 for h, w in shapes)
    assert {n.rsplit(".", 1)[1] for n, _ in a} == {"jpg", "png"}
    assert len({c for _, s in a for c in s.class_names}) == 3
    c = write_scene_set(tmp_path / "c", 3, seed=12, size_range=(200, 600))
    assert (tmp_path / "c" / c[0][0]).read_bytes() != (tmp_path / "a" / a[0][0]).read_bytes()


def test_ground_truth_files_agree_with_each_other(tmp_path):
    scenes = write_scene_set(
        tmp_path / "img", 6, seed=2, gt_dir=tmp_path / "gt", exif_fraction=1.0, size_range=(200, 500)
    )
    inst = json.loads((tmp_path / "gt" / "instances.json").read_text())
    pan = json.loads((tmp_path / "gt" / "panoptic.json").read_text())
    isthing = {c["id"]: c["isthing"] for c in pan["categories"]}
    assert {c["id"] for c in inst["categories"]} == {c["id"] for c in CATEGORIES if c["isthing"]}
    exif_seen = 0
    for img, pann, (name, scene) in zip(inst["images"], pan["annotations"], scenes):
        assert img["file_name"] == name
        decoded = decode_image((tmp_path / "img" / name).read_bytes())
        exif_seen += decoded.exif_orientation != 1
        assert (decoded.height, decoded.width) == (img["height"], img["width"])  # GT is upright
        if name.endswith(".png"):
            assert np.array_equal(decoded.pixels, scene.pixels)
        else:
            assert np.abs(decoded.pixels.astype(int) - scene.pixels).mean() < 8  # JPEG, same orientation
        png = np.asarray(Image.open(tmp_path / "gt" / "panoptic" / pann["file_name"]).convert("RGB")).astype(np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        sem = np.asarray(Image.open(tmp_path / "gt" / "semantic" / pann["file_name"]))
        assert set(np.unique(ids)) == {s["id"] for s in pann["segments_info"]}  # no void, every id listed
        for s in pann["segments_info"]:
            sel = ids == s["id"]
            assert sel.sum() == s["area"] and (sem[sel] == s["category_id"]).all()
        things = [s for s in pann["segments_info"] if isthing[s["category_id"]]]
        anns = [a for a in inst["annotations"] if a["image_id"] == img["id"]]
        assert len(things) == len(anns) == len(scene.masks)
        for a, m in zip(anns, scene.masks):
            assert np.array_equal(rle.decode(a["segmentation"]["counts"], img["height"], img["width"]), m)
            assert a["area"] == m.sum() > 0
    assert exif_seen >= 2  # stored rotated with an orientation tag


def test_flat_scenes_draw_each_shape_in_one_colour():
    """The U-Net's curriculum scenes (``flat=True``): each shape's visible pixels are one colour, and its ground
    truth is exact; negative control: textured shapes have many colours."""
    from segflow.demo.synthetic import make_scene

    flat = make_scene(np.random.default_rng(5), 240, 160, max_objects=6, min_objects=4, flat=True)
    textured = make_scene(np.random.default_rng(5), 240, 160, max_objects=6, min_objects=4)
    assert len(flat.masks) >= 4 and len(textured.masks) >= 4
    for m, name in zip(flat.masks, flat.class_names, strict=True):
        assert (flat.semantic[m] == next(c["id"] for c in CATEGORIES if c["name"] == name)).all()
    colours = [len(np.unique(s.pixels[m], axis=0)) for s in (flat, textured) for m in s.masks]
    n = len(flat.masks)
    assert colours[:n] == [1] * n, colours
    assert min(colours[n:]) > 10, colours


def test_unknown_shapes_go_into_free_space_and_leave_the_known_scene_as_it_was(tmp_path):
    """`segflow demo --unknown N`: stars, pentagons and rings no class names, away from the things; the ground truth's
    instances are the same as without them, their places are listed in ground_truth/unknown.json."""
    plain = write_scene_set(tmp_path / "a", 6, seed=9, gt_dir=tmp_path / "ga")
    mixed = write_scene_set(tmp_path / "b", 6, seed=9, gt_dir=tmp_path / "gb", unknown=2)
    assert [n for n, _ in plain] == [n for n, _ in mixed]
    for (_, p), (_, m) in zip(plain, mixed, strict=True):
        assert len(m.unknown) == 2 and p.class_names == m.class_names
        assert all(np.array_equal(a, b) for a, b in zip(p.masks, m.masks, strict=True))
        things = np.any(m.masks, axis=0) if m.masks else np.zeros(m.semantic.shape, bool)
        for u in m.unknown:
            assert not (u & things).any() and (m.semantic[u] == 0).all()
            assert not np.array_equal(p.pixels[u], m.pixels[u])  # drawn
    a = json.loads((tmp_path / "ga" / "instances.json").read_text())
    b = json.loads((tmp_path / "gb" / "instances.json").read_text())
    assert a["annotations"] == b["annotations"]  # not instances of the ontology
    assert len(json.loads((tmp_path / "gb" / "unknown.json").read_text())["annotations"]) == 12
    assert not (tmp_path / "ga" / "unknown.json").exists()
