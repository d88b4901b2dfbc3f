"""Calibrated thresholds on scored labels drawn from known distributions (fresh draws judge the estimates)."""

import numpy as np
import pytest

from segflow.tasks.evaluate.calibration import best_threshold, calibrate, recall_threshold, wilson

CLASSES = {1: "circle", 2: "square"}


def draw(seed, images=200, per_image=3, fp_per_image=2, separable=True, classes=(1, 2)):
    """Labels of ``images`` images: per class ``per_image`` gold objects, 90% found (score ~ Beta(6, 2)),
    ``fp_per_image`` false labels (score ~ Beta(2, 4)); ``separable=False`` draws every score from one law."""
    rng = np.random.default_rng(seed)
    labels, gold = [], {}
    for img in range(images):
        for c in classes:
            gold[(img, c)] = per_image
            found = int(rng.binomial(per_image, 0.9))
            for tp, n, law in ((True, found, (6, 2)), (False, fp_per_image, (2, 4))):
                for _ in range(n):
                    a, b = law if separable else (3, 3)
                    labels.append({"image_id": img, "category_id": c, "score": float(rng.beta(a, b)), "tp": tp})
    return labels, gold


def direct_counts(labels, gold, thresholds):
    tp = sum(r["tp"] and r["score"] >= thresholds[r["category_id"]] for r in labels)
    kept = sum(r["score"] >= thresholds[r["category_id"]] for r in labels)
    return tp / kept, tp / sum(gold.values())


def test_wilson_and_best_threshold():
    lo, hi = wilson(95, 100)
    assert lo < 0.95 < hi and hi - lo < 0.1 and wilson(0, 0) is None
    lo3, hi3 = wilson(3, 3)
    assert hi3 == 1.0 and lo3 < 0.5  # three of three: a wide interval
    scores, tp = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0], bool)
    assert best_threshold(scores, tp, 0.75) == 0.6 and best_threshold(scores, tp, 1.0) == 0.8
    assert best_threshold(np.array([0.5, 0.5]), np.array([1, 0], bool), 1.0) is None  # ties go together
    assert best_threshold(scores, tp, 1.0, min_kept=3) is None and best_threshold(scores, tp, 0.6, min_kept=5) == 0.5


def test_heldout_estimate_agrees_with_a_fresh_draw():
    labels, gold = draw(seed=1)
    cal = calibrate(labels, gold, CLASSES, target=0.9, folds=5)
    assert cal["warnings"] == [] and all(c["status"] == "calibrated" for c in cal["classes"].values())
    est = cal["heldout"]
    assert est["precision"] >= 0.85 and est["recall"] >= 0.5
    thresholds = {CLASSES_ID: c["threshold"] for CLASSES_ID, c in zip(CLASSES, cal["classes"].values(), strict=True)}
    fresh_labels, fresh_gold = draw(seed=2)
    precision, recall = direct_counts(fresh_labels, fresh_gold, thresholds)
    lo, hi = est["precision_ci95"]
    assert lo - 0.02 <= precision <= hi + 0.02, (precision, est)
    assert abs(recall - est["recall"]) < 0.05


def test_shuffled_scores_cannot_reach_the_target_and_say_so():
    labels, gold = draw(seed=3, separable=False)  # scores carry no information
    cal = calibrate(labels, gold, CLASSES, target=0.95)
    assert all(c["status"] == "review" and c["threshold"] is None for c in cal["classes"].values())
    assert len(cal["warnings"]) == 2 and all("reach" in w and "0.95" in w and "review" in w for w in cal["warnings"])
    assert cal["heldout"]["tp"] == 0 and cal["heldout"]["recall"] == 0.0
    # negative control: the same draw with informative scores is calibrated
    labels, gold = draw(seed=3)
    assert all(c["status"] == "calibrated" for c in calibrate(labels, gold, CLASSES, target=0.9)["classes"].values())


@pytest.mark.parametrize("n_images", [1, 3])
def test_a_class_with_few_gold_instances_goes_to_review_with_a_wide_interval(n_images):
    labels, gold = draw(seed=4)
    few, few_gold = draw(seed=5, images=n_images, per_image=1, classes=(3,))
    cal = calibrate(labels + few, {**gold, **few_gold}, {**CLASSES, 3: "triangle"}, target=0.9, min_gold=10)
    tri = cal["classes"]["triangle"]
    assert tri["status"] == "review" and tri["threshold"] is None and "too few" in tri["reason"]
    assert any(w.startswith("triangle:") for w in cal["warnings"])
    lo, hi = tri["heldout"]["recall_ci95"] or (0.0, 1.0)
    assert hi - lo > 0.4
    assert cal["classes"]["circle"]["status"] == "calibrated"


def draw_with_features(seed, images=150):
    """Labels whose detector score is weak but whose second feature (think: predicted IoU) separates right from
    wrong: the combined score must find it; ``x`` laid out as acceptance.features' columns."""
    rng = np.random.default_rng(seed)
    labels, gold = [], {}
    for img in range(images):
        gold[(img, 1)] = 3
        for tp in [True] * 3 + [False] * 3:
            score = float(rng.beta(4, 3) if tp else rng.beta(3, 4))
            quality = float(rng.normal(0.9 if tp else 0.6, 0.06))
            x = [np.log(score / (1 - score)), quality, 0.9, -4.0, 0.0, 1.0]
            labels.append({"image_id": img, "category_id": 1, "score": score, "tp": tp, "x": x})
    return labels, gold


def test_combined_score_finds_an_informative_feature_the_detector_score_misses():
    labels, gold = draw_with_features(seed=6)
    det = calibrate(labels, gold, {1: "circle"}, target=0.95, score="detector")
    comb = calibrate(labels, gold, {1: "circle"}, target=0.95, score="combined")
    assert det["classes"]["circle"]["status"] == "review"  # the detector score alone cannot reach 0.95
    c = comb["classes"]["circle"]
    assert c["status"] == "calibrated" and c["model"] is not None and comb["heldout"]["recall"] > 0.8
    assert c["model"]["coef"][1] > 0 and abs(c["model"]["coef"][1]) > abs(c["model"]["coef"][0])
    assert all(0 <= r["calibrated"] <= 1 for r in labels)
    # negative control: the same labels with that feature shuffled across them
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(labels))
    shuffled = [dict(r, x=[*r["x"][:1], labels[j]["x"][1], *r["x"][2:]]) for r, j in zip(labels, perm)]
    assert calibrate(shuffled, gold, {1: "circle"}, target=0.95, score="combined")["classes"]["circle"]["status"] == (
        "review"
    )


def test_review_band_reaches_its_recall_below_the_acceptance_threshold():
    labels, gold = draw(seed=7)
    cal = calibrate(labels, gold, CLASSES, target=0.95, review_recall=0.85)  # 90% of the objects are found at all
    for cid, c in zip(CLASSES, cal["classes"].values(), strict=True):
        assert c["review_threshold"] < c["threshold"]
        rows = [r for r in labels if r["category_id"] == cid and r["score"] >= c["review_threshold"]]
        assert 0.85 <= sum(r["tp"] for r in rows) / c["gold_instances"] < 0.87  # the highest such threshold
    held, with_review = cal["heldout"], cal["heldout_with_review"]
    assert with_review["recall"] > held["recall"] and with_review["precision"] < held["precision"]
    assert recall_threshold(np.array([0.9, 0.5]), np.array([True, False]), 4, 0.9) == 0.5  # unreachable: keep all


def test_weighted_thresholds_equal_thresholds_on_the_labels_repeated_by_their_weight():
    """A label of weight k counts as k labels (an image audited with chance 1/k stands for k images): the
    weighted thresholds equal the unweighted ones on the labels repeated k times; unweighted, they differ
    (negative control)."""
    rng = np.random.default_rng(4)
    scores = rng.random(400)
    tp = rng.random(400) < scores  # right more often at higher scores
    k = np.where(scores < 0.5, 4, 1)  # the low-score labels' images were under-sampled: they count four times
    rep_s, rep_tp = np.repeat(scores, k), np.repeat(tp, k)
    weighted = best_threshold(scores, tp, 0.9, min_kept=1, weights=k.astype(float))
    assert weighted == best_threshold(rep_s, rep_tp, 0.9, min_kept=1)
    assert best_threshold(scores, tp, 0.7, min_kept=1) != best_threshold(scores, tp, 0.7, 1, k.astype(float))
    n_gold = 1.2 * rep_tp.sum()
    assert recall_threshold(scores, tp, n_gold, 0.6, k.astype(float)) == recall_threshold(rep_s, rep_tp, n_gold, 0.6)
    assert recall_threshold(scores, tp, tp.sum() * 1.2, 0.6) != recall_threshold(
        scores, tp, n_gold, 0.6, k.astype(float)
    )


def test_heldout_figures_are_weighted_like_the_thresholds():
    """Held-out precision and recall weigh each label by its image (``image_weight``): equal weights change nothing;
    unequal ones give the precision of the labels repeated by their weight, with a wider interval than those
    repeats would (the effective sample is smaller); unweighted, the figure differs (negative control)."""
    from segflow.tasks.evaluate.calibration import _counts, _summary

    labels, gold = draw(12, images=80)
    plain = calibrate([dict(r) for r in labels], gold, CLASSES, target=0.9)
    images = {r["image_id"] for r in labels}
    same = calibrate([dict(r) for r in labels], gold, CLASSES, target=0.9, image_weight=dict.fromkeys(images, 3.0))
    assert same["heldout"] == plain["heldout"] and same["classes"] == plain["classes"]
    rng = np.random.default_rng(5)
    scores = rng.random(300)
    tp = rng.random(300) < scores
    k = np.where(scores < 0.6, 5.0, 1.0)  # lower-score labels' images weigh five
    n_gold = 1.25 * tp.sum()
    gold_w = (float(n_gold), float(n_gold * 2.0), float(n_gold * 2.0 * 2.0))  # gold instances on images of weight 2
    weighted = _summary(_counts(scores, tp, k, gold_w, 0.5))
    rep_s, rep_tp = np.repeat(scores, k.astype(int)), np.repeat(tp, k.astype(int))
    repeated = _summary(_counts(rep_s, rep_tp, np.ones(len(rep_s)), (2 * n_gold, 2 * n_gold, 2 * n_gold), 0.5))
    assert weighted["precision"] == repeated["precision"] and weighted["tp"] == int((tp & (scores >= 0.5)).sum())
    lo, hi = weighted["precision_ci95"]
    assert lo < repeated["precision_ci95"][0] and hi > repeated["precision_ci95"][1]
    assert _summary(_counts(scores, tp, np.ones(300), gold_w, 0.5))["precision"] != weighted["precision"]
