"""Ejection fraction from predicted masks against the truth, on synthetic-echo test videos.

Writes each test video of synthetic-echo as an AVI (no pixel spacing, like
EchoNet-Dynamic's) with a ``FileList.csv`` holding its true EF (area-length on
the generator's exact masks), runs the same code path as ``sslseg predict
--filelist`` with a fine-tuned checkpoint, and prints the EF mean absolute
error. As a control, the same measurement is made on the generator's exact LV
area curve (no segmentation error), which bounds what the phase detection and
the area-length formula alone contribute.

    python studies/echo_ef.py --model sslseg-demo/runs/supervised_unet_all_seed0/checkpoint.pt \
        --num-cases 48 --out /tmp/echo_ef
"""

from __future__ import annotations

import argparse
import csv
from fractions import Fraction
from pathlib import Path

import numpy as np

from sslseg.data.registry import load_dataset
from sslseg.data.splits import read_json
from sslseg.echo.measurements import ef_error, find_phases, pair_beats, smooth_curve
from sslseg.io.video import write_video
from sslseg.predict.run import Predictor, predict_inputs, write_summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a fine-tuned checkpoint")
    ap.add_argument("--num-cases", type=int, default=48, help="synthetic-echo num_cases the model was trained with")
    ap.add_argument("--splits", help="the run's splits.json (default: next to the checkpoint's run, or its parent)")
    ap.add_argument("--fps", type=float, default=50.0)
    ap.add_argument("--out", default="/tmp/sslseg-echo-ef")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    cases = load_dataset("synthetic-echo", num_cases=args.num_cases)
    run = Path(args.model).parent
    candidates = [Path(args.splits)] if args.splits else [run / "splits.json", run.parent.parent / "splits" / "splits.json"]
    split_file = next((p for p in candidates if p.exists()), None)
    if split_file is None:
        raise SystemExit(f"no splits.json found among {', '.join(map(str, candidates))}; pass --splits")
    splits = read_json(split_file)
    test = [c for c in cases if splits.get(c.case_id) == "test"]
    truth, control = {}, {}
    for c in test:
        write_video(np.asarray(c.frames), out / "videos" / f"{c.case_id}.avi", Fraction(args.fps), lossless=True)
        truth[c.case_id] = float(c.meta["ef"])
        # control: the generator's exact area curve, through the same phase detection
        area = np.asarray(c.meta["lv_area_px"], dtype=float)
        smooth = smooth_curve(area, args.fps)
        ed, es = find_phases(smooth, args.fps)
        beats = pair_beats(smooth, ed, es) or [(int(np.argmax(smooth)), int(np.argmin(smooth)))]
        control[c.case_id] = float(np.mean([100 * (area[e] - area[s]) / area[e] for e, s in beats]))
    with open(out / "FileList.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EF"])
        w.writerows([[k, f"{v:.3f}"] for k, v in truth.items()])
    fac_truth = {c.case_id: float(c.meta["fac"]) for c in test}
    print(f"{len(test)} test videos; control (exact area curve -> FAC) vs true FAC: "
          f"MAE {ef_error(control, fac_truth):.2f} points")
    predictor = Predictor.from_checkpoint(args.model)
    results = list(predict_inputs(predictor, [out / "videos"], out / "pred"))
    summary = write_summary(results, out / "pred", truth)
    rows = list(csv.DictReader(open(out / "pred" / "echo_summary.csv")))
    for r in rows:
        print(f"{Path(r['file']).stem}: EF {float(r['ef_percent']):5.1f}% (true {float(r['known_ef_percent']):5.1f}%), "
              f"{r['beats']} beat(s)")
    print(f"EF mean absolute error: {summary['ef_mae']:.2f} points over {summary['ef_compared']} video(s); "
          f"failed files: {summary['failed']}")


if __name__ == "__main__":
    main()
