"""The review batch's design (allocation, inclusion probabilities) and its estimators, on populations with a known
truth: intervals that cover it, and negative controls that do not."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.tasks.ops.review_batch import (
    BatchItem,
    ReviewBatch,
    _allocate,
    _image_inclusion,
    _ratio,
    estimate,
)


def test_allocation_is_proportional_covers_every_stratum_and_never_exceeds_one():
    sizes = {"a|0": 500, "a|1": 300, "b|0": 150, "b|1": 40, "c|0": 3}
    alloc = _allocate(sizes, 100)
    assert sum(alloc.values()) == 100
    assert all(1 <= alloc[h] <= sizes[h] for h in sizes)
    assert alloc["a|0"] > alloc["a|1"] > alloc["b|0"] > alloc["b|1"]
    assert abs(alloc["a|0"] - 100 * 500 / 993) <= 1.5
    assert _allocate({"x": 5, "y": 7}, 100) == {"x": 5, "y": 7}  # a budget past the population takes all of it
    assert sum(_allocate({f"s{i}": 10 for i in range(8)}, 3).values()) == 3  # fewer than strata: no overshoot


def test_image_inclusion_probabilities_match_the_draw():
    """Exact hypergeometric probabilities against 20,000 simulated stratified draws; negative control: the naive
    per-mask rate (n_h / N_h times masks) is far off for images with several masks."""
    rng = np.random.default_rng(0)
    images = np.repeat(np.arange(30), rng.integers(1, 6, 30))
    strata = np.where(rng.random(len(images)) < 0.6, "a", "b").astype(object)
    sizes = {h: int((strata == h).sum()) for h in ("a", "b")}
    alloc = {"a": 12, "b": 6}
    exact = _image_inclusion(images, strata, sizes, alloc)
    hits = np.zeros(30)
    for _ in range(20_000):
        drawn = np.concatenate([rng.choice(np.flatnonzero(strata == h), alloc[h], replace=False) for h in alloc])
        hits[np.unique(images[drawn])] += 1
    simulated = hits / 20_000
    assert max(abs(exact[i] - simulated[i]) for i in range(30)) < 0.02
    naive = np.array([sum(alloc[h] / sizes[h] for h in strata[images == i]) for i in range(30)])
    assert np.abs(naive - simulated).max() > 0.1


def _population(rng, n=2000):
    """Exported masks in 8 strata whose precision differs (0.80 to 0.995); each mask on its own image."""
    strata = np.array([f"{c}|{b}" for c in ("circle", "square") for b in range(4)], object)
    h = rng.integers(0, 8, n)
    p = np.array([0.80, 0.90, 0.97, 0.995, 0.85, 0.93, 0.98, 0.99])[h]
    right = rng.random(n) < p
    return strata[h], right


def _batch(rng, strata, n_audit, fix_wrong=0, right=None):
    sizes = {str(s): int((strata == s).sum()) for s in np.unique(strata)}
    alloc = _allocate(sizes, n_audit)
    items = []
    for s in sorted(sizes):
        for r in rng.choice(np.flatnonzero(strata == s), alloc[s], replace=False):
            items.append(BatchItem(int(r), int(r), s.split("|")[0], "audit", s, alloc[s] / sizes[s]))
    if fix_wrong:  # the fix part: chosen for being wrong, never a probability sample
        wrong = np.flatnonzero(~right)[:fix_wrong]
        items += [BatchItem(int(r), int(r), "circle", "fix") for r in wrong]
    return ReviewBatch(
        "b0001", "now", n_audit, 1.0, 0, len(strata), {s: {"N": sizes[s], "n": alloc[s]} for s in sizes}, items
    )


def test_the_precision_interval_covers_the_truth_and_the_fix_part_does_not_bias_it():
    """200 audits of 150 masks from one population: the 95% interval holds the true precision at least 90% of the
    time, with a half-width under 0.05. Negative control: the same answers averaged with the fix part's (chosen for
    being wrong) miss the truth almost always."""
    rng = np.random.default_rng(7)
    strata, right = _population(rng)
    truth = right.mean()
    covered, widths, biased = 0, [], 0
    for _ in range(200):
        batch = _batch(rng, strata, 150, fix_wrong=40, right=right)
        kept = {it.annotation_id for it in batch.items if right[it.annotation_id]}
        objects = {it.image_id: 1 for it in batch.items}
        e = estimate(batch, set(range(len(right))), kept, objects)
        covered += e["precision_low"] <= truth <= e["precision_high"]
        widths.append((e["precision_high"] - e["precision_low"]) / 2)
        everything = [right[it.annotation_id] for it in batch.items]
        biased += abs(np.mean(everything) - truth) > 0.03
    assert covered >= 180, covered
    assert np.mean(widths) <= 0.05
    assert biased >= 190


def test_recall_ratio_estimator_is_unbiased_under_unequal_probabilities():
    """Images drawn with probability proportional to their size: the Horvitz-Thompson ratio recovers the
    population's recall, the unweighted ratio (negative control) does not."""
    rng = np.random.default_rng(3)
    n_img = 3000
    objects = rng.integers(1, 12, n_img)
    found = rng.binomial(objects, np.clip(0.95 - 0.05 * objects, 0.2, 1.0))  # crowded images lose more objects
    truth = found.sum() / objects.sum()
    pi = np.clip(objects / objects.sum() * 300, 0, 1)
    estimates, naive, covered = [], [], 0
    for _ in range(300):
        drawn = np.flatnonzero(rng.random(n_img) < pi)
        r, lo, hi = _ratio(found[drawn].astype(float), objects[drawn].astype(float), pi[drawn])
        estimates.append(r)
        naive.append(found[drawn].sum() / objects[drawn].sum())
        covered += lo <= truth <= hi
    assert abs(np.mean(estimates) - truth) < 0.01
    assert abs(np.mean(naive) - truth) > 0.03
    assert covered >= 270


@pytest.mark.parametrize("answers", ["all right", "all wrong"])
def test_an_audit_without_variance_still_gets_an_honest_interval(answers):
    rng = np.random.default_rng(1)
    strata = np.array(["circle|0"] * 500 + ["circle|1"] * 500, object)
    batch = _batch(rng, strata, 60)
    kept = {it.annotation_id for it in batch.items} if answers == "all right" else set()
    e = estimate(batch, set(range(1000)), kept, {it.image_id: 1 for it in batch.items})
    assert e["precision"] == (1.0 if answers == "all right" else 0.0)
    assert 0.0 < e["precision_high"] - e["precision_low"] < 0.1  # Wilson's interval at n = 60, not a zero width


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["strata"]["circle|0"].update(N="many"),
        lambda d: d["strata"]["circle|0"].update(n=10**9),
        lambda d: d["items"][0].update(part="exec"),
        lambda d: d["items"][0].update(stratum="nowhere"),
        lambda d: d["image_inclusion"].update({"1": 7.0}),
        lambda d: d["items"][0].update(surprise=1),
    ],
)
def test_a_tampered_batch_file_is_refused_in_one_line(tmp_path, change):
    """Batch files sit in an output others can write: each field is checked before it is used."""
    import json

    from segflow.tasks.formats.labels import ExportError
    from segflow.tasks.ops.review_batch import audited_images, read_batch

    rng = np.random.default_rng(0)
    batch = _batch(rng, np.array(["circle|0"] * 50, object), 10)
    batch.image_inclusion = {str(it.image_id): 0.2 for it in batch.items}
    (tmp_path / "review_batches").mkdir()
    path = tmp_path / "review_batches" / "b0001.json"
    path.write_bytes(batch.to_json())
    assert len(read_batch(str(tmp_path)).items) == 10 and len(audited_images(str(tmp_path))) == 10
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="b0001.json is not a review batch"):
        read_batch(str(tmp_path))
