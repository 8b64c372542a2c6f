"""The demo's printed table: the pooled Dice column beside the per-frame mean."""

from sslseg.experiments.demo import format_table


def _row(method, seed, case, dice, overlap, total):
    return {"arch": "unet", "method": method, "labelled_cases": "1", "seed": str(seed), "case": case,
            "dice": str(dice), "hd95": "1.0", "convention": "frame", "overlap": str(overlap), "total": str(total),
            "dataset": "synthetic-echo"}


def test_pooled_column_pools_each_runs_frames_then_averages_subsets():
    rows = []
    for method in ("none", "simclr"):
        # subset 0: a small case badly and a large case well; subset 1: two equal cases
        rows += [_row(method, 0, "a", 0.2, 10, 100), _row(method, 0, "b", 0.9, 450, 1000)]
        rows += [_row(method, 1, "a", 0.5, 50, 200), _row(method, 1, "b", 0.5, 50, 200)]
    line = next(ln for ln in format_table(rows).splitlines() if ln.startswith("random"))
    dice, pooled = (float(x) for x in line.split()[2:4])
    # per-frame mean: ((0.2 + 0.9) / 2 + 0.5) / 2; pooled: (2*460/1100 + 2*100/400) / 2
    assert round(dice, 3) == round((0.55 + 0.5) / 2, 3)
    assert round(pooled, 3) == round((920 / 1100 + 0.5) / 2, 3), line
