"""The report follows the evidence: words, colours and marks follow the interval across labelled subsets;
secondary intervals are subset-level; every figure gives a method one colour; overlays are colour-blind safe;
wide intervals do not squash a figure; the echo Dice is compared with published numbers like with like.

Everything here is built from a hand-made ``results.csv`` (no training): fast, and every number is known."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from sslseg.evaluate.metrics import overlap_counts, pooled_dice
from sslseg.report import plots
from sslseg.report.html import write_report
from sslseg.report.stats import t_interval
from sslseg.report.tables import (
    format_gains,
    format_text,
    paired_tests,
    subset_gains,
    subset_means,
    summary_table,
)

CASES = 16
KEYS = ["method", "init", "mode", "arch", "dataset", "budget", "labelled_cases", "seed", "case_id", "dice", "hd95",
        "frames", "hd95_undefined", "run", "convention", "dice_frames", "hd95_frames", "dice_pooled", "overlap",
        "total", "hd95_penalised", "empty_truth_fp", "val_dice"]

# random init's mean test Dice per (budget, seed), and each method's gain over it on that labelled subset
BASE = {1: [0.55, 0.62, 0.58], 4: [0.80, 0.83, 0.81], 38: [0.90, 0.91, 0.905]}
TWO = {  # two subsets: nothing is clear, whatever the sign or size of the mean
    ("simclr", 1): [0.30, -0.04],  # mean +0.130; t interval about -2.0 to +2.3
    ("byol", 1): [-0.001, -0.003],  # a tie: mean -0.002, interval includes 0
    ("simclr", 4): [-0.002, -0.004],  # random init ahead by 0.003, not clearly
    ("byol", 4): [-0.005, -0.001],
}
THREE = {  # three subsets: a clear gain, a clear loss, and no clear difference
    ("simclr", 1): [0.05, 0.06, 0.055],
    ("byol", 1): [-0.05, -0.06, -0.055],
    ("regression", 1): [0.10, -0.06, 0.02],
    ("simclr", 4): [0.02, 0.025, 0.03],
    ("byol", 4): [0.0, 0.002, -0.001],
}


def _rows(gains: dict, seeds: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    pattern = rng.normal(0, 0.03, CASES)  # every method finds the same cases hard
    cells = [("none", k) for k in (1, 4)] + list(gains) + [("supervised", 38)]
    for method, k in cells:
        for s in range(seeds):
            g = gains.get((method, k), [0.0] * seeds)[s]
            for i in range(CASES):
                d = float(np.clip(BASE[k][s] + g + pattern[i] + rng.normal(0, 0.005), 0, 1))
                total = 1800 + 40 * i  # |P| + |G| over the case's two frames
                pooled = min(1.0, d + 0.012)
                rows.append({
                    "method": method, "init": method.split("+")[0], "mode": "supervised", "arch": "unet",
                    "dataset": "synthetic-echo", "budget": str(k), "labelled_cases": str(k), "seed": str(s),
                    "case_id": f"case{i:02d}", "dice": d, "hd95": 20 - 10 * d, "frames": 2, "hd95_undefined": 0,
                    "run": f"{method}_unet_{k}_seed{s}", "convention": "frame", "dice_frames": d, "hd95_frames": 20 - 10 * d,
                    "dice_pooled": pooled, "overlap": round(pooled * total / 2), "total": total, "hd95_penalised": 0,
                    "empty_truth_fp": 0, "val_dice": d})
    return rows


def _sweep(folder: Path, gains: dict, seeds: int, curves: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(gains, seeds)
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=KEYS)
        w.writeheader()
        w.writerows(rows)
    for run in sorted({r["run"] for r in rows} if curves else ()):  # training curves: one metrics.csv per run
        d = folder / "runs" / run
        d.mkdir(parents=True, exist_ok=True)
        (d / "done.json").write_text("{}")
        with open(d / "metrics.csv", "w", newline="") as f:
            f.write("step,loss,val_dice\n" + "".join(f"{t},{1 / t:.3f},{0.5 + 0.01 * t:.3f}\n" for t in (1, 2, 3)))
    return folder


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("two") / "sweep", TWO, 2, curves=False)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("three") / "sweep", THREE, 3)


def _capture(seen: dict):
    """A stand-in for :func:`plots._save` that keeps each figure, by file name, before it is saved."""
    save = plots._save

    def keep(fig, path, *a, **k):
        seen[Path(path).name] = fig
        fig.canvas.draw()
        return save(fig, path, *a, **k)

    return keep


@pytest.fixture(scope="module")
def report_two(two):
    return write_report(two)


THREE_FIGURES: dict = {}  # the figures of the report of three subsets, by file name


@pytest.fixture(scope="module")
def report_three(three):
    """The report of three subsets, written once, its figures kept in ``THREE_FIGURES``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", _capture(THREE_FIGURES))
        return write_report(three)


def _read(folder: Path) -> list[dict]:
    return list(csv.DictReader(open(folder / "results.csv", newline="")))


def _gain(gains, method, k):
    (g,) = [g for g in gains if (g["method"], g["labelled_cases"]) == (method, k)]
    return g


# -- words -----------------------------------------------------------------------------------------------------

def test_words_follow_the_interval_not_the_sign(two, three):
    g2 = subset_gains(_read(two))
    big = format_gains([_gain(g2, "simclr", 1)])  # +0.130 mean, interval across 0
    tie = format_gains([_gain(g2, "byol", 1)])  # -0.002, interval across 0
    assert "no clear difference" in big and "beats" not in big, big
    assert "no clear difference" in tie and "loses" not in tie, tie
    g3 = subset_gains(_read(three))
    gain, loss, unclear = (format_gains([_gain(g3, m, 1)]) for m in ("simclr", "byol", "regression"))
    assert "beats random init" in gain and "clear gain" in gain, gain
    assert "loses to random init" in loss and "clear loss" in loss, loss
    assert "no clear difference" in unclear and "beats" not in unclear, unclear
    one = subset_gains([r for r in _read(three) if r["seed"] == "0"])
    text = format_gains([_gain(one, "simclr", 1)])
    assert "one labelled subset: no interval" in text and "beats" not in text, text


# -- marks -----------------------------------------------------------------------------------------------------

def test_console_table_marks_only_a_clear_winner(two, three):
    t2 = format_text(summary_table(_read(two)))
    # random init is 0.003 ahead at 4 labelled cases, inside the interval: nothing is marked best
    assert not any(line.rstrip().endswith("*") for line in t2.splitlines()), t2
    assert "clearly best" not in t2.split("\n\n")[0], t2
    t3 = summary_table(_read(three))
    best = [(r["method"], r["labelled_cases"]) for r in t3 if r["best"]]
    # at 4 labelled cases simclr is ahead of every other initialisation, each paired interval above 0; at 1 it
    # clearly beats random init and byol but not regression (whose subsets swing from -0.06 to +0.10)
    assert best == [("simclr", 4)]
    text = format_text(t3)
    (line,) = [ln for ln in text.splitlines() if ln.split()[1:3] == ["simclr", "4"]]
    assert "clearly best" in line and "clear gain" in line, text
    (line,) = [ln for ln in text.splitlines() if ln.split()[1:3] == ["simclr", "1"]]
    assert "clearly best" not in line and "clear gain" in line, text
    (line,) = [ln for ln in text.splitlines() if ln.split()[1:3] == ["byol", "1"]]
    assert "clear loss" in line, text


def test_table_interval_is_across_subsets_and_states_the_test_cases(two):
    rows = _read(two)
    means = subset_means(rows)
    for r in summary_table(rows):
        per = [v for (a, m, k, s), v in means.items() if (m, k) == (r["method"], r["labelled_cases"])]
        mean, lo, hi = t_interval(per)
        assert (r["mean"], r["ci_low"], r["ci_high"]) == pytest.approx((mean, lo, hi), nan_ok=True)
        assert r["cases"] == CASES and r["subsets"] == len(per)
    assert f"{CASES} test cases" in format_text(summary_table(rows))


def test_test_case_level_interval_resamples_subsets_then_cases(two):
    # simclr at 1 case: +0.30 on one subset, -0.04 on the other, each tight over its 16 cases; a bootstrap
    # over the 32 pooled test rows gives a narrow interval around +0.13, which the subsets contradict
    (t,) = [t for t in paired_tests(_read(two)) if (t["method"], t["labelled_cases"]) == ("simclr", 1)]
    assert t["ci_low"] < -0.03 and t["ci_high"] > 0.29, t
    assert t["subsets"] == 2 and t["n"] == 2 * CASES


# -- the report page -------------------------------------------------------------------------------------------

def _items(page: str) -> dict[str, tuple[str, str]]:
    summary = page[page.index("<section id='summary'>"):page.index("<section id='gains'>")]
    return {(re.search(r"<b>(.*?)</b>", m.group(2)).group(1), re.search(r"at (\d+) labelled", m.group(2)).group(1)):
            (m.group(1), re.sub("<[^>]+>", "", m.group(2)))
            for m in re.finditer(r"<li class='([^']*)'>(.*?)</li>", summary, re.S) if "labelled case" in m.group(2)}


def test_report_words_colours_and_marks_follow_the_interval(report_two, report_three):
    page = report_two.read_text()
    items = _items(page)
    for key in (("simclr", "1"), ("byol", "1"), ("simclr", "4"), ("byol", "4")):
        cls, text = items[key]
        assert cls == "unclear" and "no clear difference" in text, (key, cls, text)
    table = page[page.index("<section id='table'>"):page.index("<section id='overlays'>")]
    assert "★" not in table and "class='best'" not in table and "class='pos'" not in table
    assert f"{CASES} test cases" in page[:page.index("<section id='gains'>")]
    curve = page[page.index("<section id='dice-curve'>"):page.index("<section id='hd95-curve'>")]
    assert "bootstrap" not in curve and "across labelled subsets" in curve and "log2" in curve
    page3 = report_three.read_text()
    items = _items(page3)
    assert items[("simclr", "1")][0] == "gain" and items[("byol", "1")][0] == "loss"
    assert items[("regression", "1")][0] == "unclear"
    table = page3[page3.index("<section id='table'>"):page3.index("<section id='overlays'>")]
    assert table.count("clearly best") == 2  # one row (simclr at 4) and the note


# -- figures ---------------------------------------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch):
    """Every figure the report draws, by file name, before it is saved and closed."""
    seen: dict = {}
    monkeypatch.setattr(plots, "_save", _capture(seen))
    return seen


def _band(ax, k: float) -> tuple[float, float]:
    """(low, high) of the first filled band at x = k."""
    (poly,) = [c for c in ax.collections if c.__class__.__name__ in ("PolyCollection", "FillBetweenPolyCollection")][:1]
    v = poly.get_paths()[0].vertices
    at = v[np.isclose(v[:, 0], k)][:, 1]
    return float(at.min()), float(at.max())


def test_dice_curve_bands_are_the_headline_interval_clipped_on_a_log2_axis(three, figures, tmp_path):
    rows = [r for r in _read(three) if r["method"] in ("none", "supervised")]
    plots.dice_vs_labels(rows, tmp_path / "d.png")
    ax = figures["d.png"].axes[0]
    means = subset_means(rows)
    for k in (1, 4):
        _, lo, hi = t_interval([v for (a, m, kk, s), v in means.items() if (m, kk) == ("none", k)])
        assert _band(ax, k) == pytest.approx((max(lo, 0.0), min(hi, 1.0)), abs=1e-9)
    assert "log2" in ax.get_xlabel()
    # two subsets: the t interval runs far past 0 and 1; the axis stays on the Dice range, clipping marked
    two_rows = [r for r in _read(three) if r["seed"] in ("0", "1")]
    plots.dice_vs_labels(two_rows, tmp_path / "d2.png")
    ax = figures["d2.png"].axes[0]
    lo, hi = ax.get_ylim()
    assert lo >= -0.05 and hi <= 1.05, (lo, hi)
    assert any("clipped" in (t.get_text() or "") for t in ax.texts + [ax.title]) or "clipped" in str(
        ax.get_legend_handles_labels()[1]), "clipped intervals are not marked"


def test_wide_intervals_do_not_squash_the_gains_figure(two, figures, tmp_path):
    gains = subset_gains(_read(two))
    plots.subset_gains_figure(gains, tmp_path / "g.png")
    ax = figures["g.png"].axes[0]
    dots = [v for g in gains if g["labelled_cases"] == 1 for v in g["gains"].values()]
    lo, hi = ax.get_ylim()
    span = max(dots + [0]) - min(dots + [0])
    assert hi - lo < 2 * span, (lo, hi, span)  # the t interval of 2 subsets spans ~4.3 Dice: clipped, marked
    assert any("clipped" in t.get_text() or "to +2" in t.get_text() for t in ax.texts), [t.get_text() for t in ax.texts]


def _colours(fig) -> dict[str, str]:
    out = {}
    for ax in fig.axes:
        handles, labels = ax.get_legend_handles_labels()
        for h, label in zip(handles, labels, strict=True):
            c = h.get_color() if hasattr(h, "get_color") else h.get_facecolor()
            out[label.split(",")[0].split(" (")[0]] = to_hex(np.asarray(c).reshape(-1)[:4] if not isinstance(c, str) else c)
    return out


def test_one_colour_per_method_across_every_figure(report_three):
    figures = THREE_FIGURES
    dice = _colours(figures["dice_vs_labels.png"])
    curves = _colours(figures["training_curves.png"])
    gains_fig = figures["gains_by_subset.png"]
    ticks = [t.get_text().split("\n")[0] for t in gains_fig.axes[0].get_xticklabels()]
    dots = {}
    for coll in gains_fig.axes[0].collections:
        offs = coll.get_offsets()
        if coll.__class__.__name__ == "PathCollection" and len(offs):  # the dots
            dots[ticks[int(round(offs[0][0]))]] = to_hex(coll.get_facecolor()[0])
    for method in ("simclr", "byol", "regression"):
        assert dice[method] == curves[method] == dots[method], (method, dice, curves, dots)
    assert dice["random init"] == curves["random init"]
    assert len({dice[m] for m in ("simclr", "byol", "regression", "random init")}) == 4
    styles = [plots.method_style(m)["color"] for m in ("simclr", "simclr+bcp", "simclr+unimatch", "none+bcp")]
    assert len(set(styles)) == 4  # a semi-supervised mode is a method of its own colour


def test_overlays_are_colour_blind_safe(tmp_path, figures):
    yy, xx = np.mgrid[:32, :32]
    gt = ((yy - 16) ** 2 + (xx - 16) ** 2 < 64).astype(np.uint8)
    pred = ((yy - 17) ** 2 + (xx - 15) ** 2 < 49).astype(np.uint8)
    np.savez(tmp_path / "ex.npz", rows=np.array(["best"]), columns=np.array(["random init", "simclr"]),
             image_0=np.random.default_rng(0).random((32, 32)).astype(np.float32), gt_0=gt,
             info_0=np.array(["case00", "0"]), pred_0_0=pred, pred_0_1=gt, dice_0_0=0.8, dice_0_1=1.0)
    plots.overlays(tmp_path / "ex.npz", tmp_path / "ov.png", "test")
    colours = set()
    for ax in figures["ov.png"].axes:
        for c in ax.collections:
            for rgba in np.atleast_2d(c.get_edgecolor()):
                colours.add(to_hex(rgba))
    assert colours, "no contour drawn"
    assert not colours & {"#ff0000", "#00ff00", "#008000", "#d62728", "#2ca02c"}, colours  # no red/green pair
    assert colours <= {c.lower() for c in plots.OKABE_ITO.values()}, colours


# -- pooled Dice (echo) ----------------------------------------------------------------------------------------

def test_pooled_dice_by_hand_and_with_monai():
    from monai.metrics import DiceMetric

    yy, xx = np.mgrid[:24, :24]
    frames = [((yy - 12) ** 2 + (xx - 12) ** 2 < r * r) for r in (3, 6, 9)]
    preds = [np.roll(f, s, axis=1) for f, s in zip(frames, (2, 1, 1), strict=True)]
    rows = []
    for p, g in zip(preds, frames, strict=True):
        inter, total = overlap_counts(p.astype(int), g.astype(int), [1])
        assert inter == int((p & g).sum()) and total == int(p.sum() + g.sum())
        rows.append({"overlap": inter, "total": total})
    hand = 2 * sum(int((p & g).sum()) for p, g in zip(preds, frames, strict=True)) / sum(
        int(p.sum() + g.sum()) for p, g in zip(preds, frames, strict=True))
    assert pooled_dice(rows) == pytest.approx(hand)
    # MONAI: a batch of the frames, Dice per frame then the batch mean, is the per-frame mean...
    y_pred = torch.as_tensor(np.stack(preds))[:, None].float()
    y = torch.as_tensor(np.stack(frames))[:, None].float()
    per_frame = DiceMetric(include_background=True, reduction="mean_batch")
    per_frame(y_pred, y)
    frame_mean = float(per_frame.aggregate()[0])
    assert frame_mean == pytest.approx(np.mean([2 * (p & g).sum() / (p.sum() + g.sum()) for p, g in
                                                zip(preds, frames, strict=True)]))
    # ...and the pooled Dice is MONAI's Dice of the frames laid side by side as one image
    pooled = DiceMetric(include_background=True, reduction="mean")
    pooled(torch.cat(list(y_pred), -1)[None], torch.cat(list(y), -1)[None])
    assert pooled_dice(rows) == pytest.approx(float(pooled.aggregate()))
    assert pooled_dice(rows) - frame_mean > 0.02  # the small frame weighs less: the two are not the same number


def test_report_gives_pooled_dice_beside_the_frame_mean_and_says_which_is_which(three, report_three):
    rows = _read(three)
    page = report_three.read_text()
    table = page[page.index("<section id='table'>"):page.index("<section id='overlays'>")]
    assert "pooled Dice" in table and "per-frame" in table
    for method, k in (("none", 1), ("simclr", 4)):
        per_subset = [pooled_dice([r for r in rows if (r["method"], r["labelled_cases"], r["seed"]) == (method, str(k), s)])
                      for s in ("0", "1", "2")]
        want = f"{np.mean(per_subset):.3f}"
        label = "random init" if method == "none" else method
        (row,) = [tr for tr in table.split("<tr") if f">{label}<" in tr.replace(" ★", "").replace(
            " (clearly best)", "") and f"<td>{k}</td>" in tr]
        assert f"<td>{want}</td>" in row, (want, row)
    summary = page[page.index("<section id='summary'>"):page.index("<section id='gains'>")]
    assert "0.9252" in summary and "pooled" in summary  # the published echo number, set beside the like number
    # the console table too; volumes (whose Dice is already pooled over their slices) get no pooled column
    text = format_text(summary_table(rows))
    (line,) = [ln for ln in text.splitlines() if ln.split()[1:3] == ["none", "1"]]
    per_subset = [pooled_dice([r for r in rows if (r["method"], r["labelled_cases"], r["seed"]) == ("none", "1", s)])
                  for s in ("0", "1", "2")]
    assert "pooled" in text.splitlines()[0] and f" {np.mean(per_subset):.3f}" in line and "0.9252" in text
    volumes = [{**r, "convention": "volume"} for r in rows]
    assert "pooled" not in format_text(summary_table(volumes)).splitlines()[0]


# -- a real browser ---------------------------------------------------------------------------------------------

PROBE = """<script>
window.addEventListener('load', () => {
  const items = [...document.querySelectorAll('#summary li')].map(li => [li.className, getComputedStyle(li).color,
    li.getBoundingClientRect().top, li.textContent]);
  const img = document.querySelector('#gains img');
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({items, img: img ? [img.naturalWidth, img.naturalHeight] : null,
    innerHeight: window.innerHeight});
  document.body.appendChild(pre);
});
</script>"""


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def test_first_screen_in_headless_chromium(report_three, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs the Debian package)")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1000"]
    for name, report in (("three", report_three),):  # a clear gain, a clear loss, and no clear difference
        shot = tmp_path / f"first_screen_{name}.png"  # kept in the test's folder: look at it
        subprocess.run(base + [f"--screenshot={shot}", report.resolve().as_uri()], check=True, capture_output=True,
                       timeout=120)
        from PIL import Image

        img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
        assert img.shape[:2] == (1000, 1200) and img.std() > 10
        probe = tmp_path / f"probe_{name}.html"
        probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        dom = subprocess.run(base + ["--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()], check=True,
                             capture_output=True, text=True, timeout=120).stdout
        found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
        assert found, "the page's load handler did not run"
        got = json.loads(found.group(1).replace("&quot;", '"'))
        colours = {}
        for cls, colour, _, text in got["items"]:
            colours.setdefault(cls, set()).add(_rgb(colour))
            if "clear difference" in text:  # grey, not green or red
                c = _rgb(colour)
                assert max(c) - min(c) < 40, f"an unclear difference is drawn in colour {c}: {text}"
        if name == "three":
            (gain,), (loss,) = colours["gain"], colours["loss"]
            assert gain != loss and all(max(c) - min(c) >= 40 for c in (gain, loss))
            # a green/red pair is what colour-blind readers cannot tell apart
            green = gain[1] > gain[0] + 40 and gain[1] > gain[2] + 40
            red = loss[0] > loss[1] + 40 and loss[0] > loss[2] + 40 and loss[1] < 60
            assert not (green and red), (gain, loss)
        first = [top for _, _, top, _ in got["items"]]
        assert first and min(first) < got["innerHeight"], "the verdicts are not on the first screen"
        w, h = got["img"]
        assert h > 0.4 * w / 2, (w, h)  # the gains figure is not a thin strip
