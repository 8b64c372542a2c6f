"""``sslseg report DIR``: one self-contained ``report.html`` (figures embedded) from a sweep folder."""

from __future__ import annotations

import base64
import csv
import html
import math
import platform
from pathlib import Path

from .plots import dice_vs_labels, overlays, training_curves
from .tables import REFERENCE, paired_tests, summary_table

SECTIONS = ("summary", "dice-curve", "hd95-curve", "table", "paired-tests", "overlays", "training-curves",
            "config", "environment")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.6rem;margin:.2em 0} h2{font-size:1.15rem;margin-top:2em;border-bottom:1px solid #d8dce3;padding-bottom:.3em}
section{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:8px 20px 16px;margin-top:18px}
table{border-collapse:collapse;font-size:.9rem;margin:.5em 0}
th,td{padding:4px 10px;border-bottom:1px solid #eceef2;text-align:right} th{background:#f0f2f5}
td.l,th.l{text-align:left} tr.best td{font-weight:600;background:#eef8ee}
.neg{color:#b3261e}.pos{color:#1b7a2e} img{max-width:100%;height:auto}
pre{background:#f3f4f6;padding:10px;border-radius:6px;overflow-x:auto;font-size:.8rem}
.note{color:#555;font-size:.85rem} nav a{margin-right:12px;font-size:.85rem}
"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return f"<p class='note'>No figure: {html.escape(alt)} (not enough data).</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _fmt(x: float, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _label(m: str) -> str:
    return "random init" if m == REFERENCE else m


def write_report(sweep_dir: str | Path) -> Path:
    """Write ``DIR/report.html`` and ``DIR/figures/*.png`` from ``DIR/results.csv`` and the run folders."""
    out = Path(sweep_dir)
    res = out / "results.csv"
    if not res.exists():
        raise ValueError(f"{res} not found; run `sslseg sweep` first")
    rows = list(csv.DictReader(open(res, newline="")))
    if not rows:
        raise ValueError(f"{res} has no finished run yet")
    sets = sorted({r["dataset"] for r in rows})
    if len(sets) > 1:
        # several data sets: every table, curve and test is per (data set, arch), shown as the arch column
        rows = [{**r, "arch": f"{r['arch']} · {r['dataset']}"} for r in rows]
    figs = out / "figures"
    dice_png = dice_vs_labels(rows, figs / "dice_vs_labels.png", "dice")
    hd_png = dice_vs_labels(rows, figs / "hd95_vs_labels.png", "hd95")
    table = summary_table(rows, "dice")
    hd_table = {(r["arch"], r["method"], r["labelled_cases"]): r for r in summary_table(rows, "hd95")}
    tests = paired_tests(rows, "dice")

    # overlays for the best method at the smallest budget (its first seed)
    smallest = min(int(r["labelled_cases"]) for r in rows)
    at_small = [t for t in table if t["labelled_cases"] == smallest and t["method"] != "supervised"]
    best = max(at_small, key=lambda t: (t["mean"] if not math.isnan(t["mean"]) else -1)) if at_small else None
    ov_png = None
    if best is not None:
        run_names = sorted({r["run"] for r in rows if r["method"] == best["method"] and r["arch"] == best["arch"]
                            and int(r["labelled_cases"]) == smallest})
        if run_names:
            ov_png = overlays(out / "runs" / run_names[0] / "examples.npz", figs / "overlays.png",
                              f"{_label(best['method'])}, {best['arch']}, {smallest} labelled case(s)")
    curves_png = training_curves([p.parent for p in (out / "runs").glob("*/done.json")], figs / "training_curves.png")

    summary = _summary(table, tests, rows)
    body = [
        "<h1>sslseg label-efficiency report</h1>",
        f"<p class='note'>{html.escape(str(out.resolve()))} · {len({r['run'] for r in rows})} runs · "
        f"{len(rows)} rows in results.csv</p>",
        "<nav>" + "".join(f"<a href='#{s}'>{s.replace('-', ' ')}</a>" for s in SECTIONS) + "</nav>",
        f"<section id='summary'><h2>Summary</h2>{summary}</section>",
        f"<section id='dice-curve'><h2>Dice vs labelled cases</h2>{_img(dice_png, 'Dice vs labelled cases')}"
        "<p class='note'>Mean over test cases and seeds; bands: 95% bootstrap CI of the mean.</p></section>",
        f"<section id='hd95-curve'><h2>HD95 vs labelled cases</h2>{_img(hd_png, 'HD95 vs labelled cases')}"
        "<p class='note'>95th-percentile Hausdorff distance in mm (lower is better). "
        f"{_penalty_note(rows)}</p></section>",
        f"<section id='table'><h2>Mean ± 95% CI per method and budget</h2>{_table_html(table, hd_table)}</section>",
        f"<section id='paired-tests'><h2>Paired tests against random init</h2>{_tests_html(tests)}</section>",
        f"<section id='overlays'><h2>Best, median and worst test case</h2>{_img(ov_png, 'overlays')}</section>",
        f"<section id='training-curves'><h2>Training curves</h2>{_img(curves_png, 'training curves')}</section>",
        f"<section id='config'><h2>Resolved config</h2><pre>{html.escape(_read(out / 'config.yaml'))}</pre></section>",
        f"<section id='environment'><h2>Environment</h2>{_env_html()}</section>",
    ]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sslseg report</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>")
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def _penalty_note(rows: list[dict]) -> str:
    """How the HD95 and Dice conventions touched these rows: penalised HD95s, pooled Dice (echo)."""
    def count(key: str) -> int:
        return int(sum(float(r.get(key) or 0) for r in rows))

    convs = sorted({r.get("convention") for r in rows if r.get("convention")})
    if not convs:  # results.csv written before the conventions were recorded
        return "Cases where it is undefined (empty prediction) are counted in results.csv, not averaged."
    text = (f"Scored per {' and per '.join(convs)} (README, 'How we score'). An HD95 left undefined by an empty "
            f"prediction (or truth) is penalised with the image diagonal in mm: {count('hd95_penalised')} time(s) "
            f"in {len(rows)} rows ({count('hd95_undefined')} undefined).")
    if "frame" in convs and all(r.get("total") not in (None, "") for r in rows):
        from ..evaluate.metrics import pooled_dice

        by: dict[tuple, list[dict]] = {}
        for r in rows:
            by.setdefault((r["arch"], r["method"], r["labelled_cases"]), []).append(r)
        cells = ", ".join(f"{m} {a} {k}: {pooled_dice(rs):.3f}" for (a, m, k), rs in sorted(by.items()))
        text += f" EchoNet's pooled Dice (all test frames pooled, beside the per-case mean above): {html.escape(cells)}."
    return text


def _summary(table: list[dict], tests: list[dict], rows: list[dict]) -> str:
    items = []
    for t in tests:
        p = t["p_value"]
        d = t["mean_diff"]
        word = "beats" if d > 0 else ("loses to" if d < 0 else "ties with")
        cls = "pos" if d > 0 else ("neg" if d < 0 else "")
        sig = f"p = {p:.3g}" if not math.isnan(p) else "too few pairs for a test"
        items.append(f"<li class='{cls}'><b>{html.escape(t['method'])}</b> ({html.escape(t['arch'])}) {word} random "
                     f"init by {abs(t['mean_diff']):.3f} Dice at {t['labelled_cases']} labelled case(s) "
                     f"[95% CI {t['ci_low']:+.3f} to {t['ci_high']:+.3f}; Wilcoxon {sig}; n = {t['n']}]</li>")
    sup = [t for t in table if t["method"] == "supervised"]
    for s in sup:
        items.append(f"<li>Supervised baseline ({html.escape(s['arch'])}, all {s['labelled_cases']} labelled cases, "
                     f"random init): Dice {s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]</li>")
    if not items:
        items.append("<li>No pretrained method to compare with random initialisation.</li>")
    sets = sorted({r["dataset"] for r in rows})
    data = ", ".join(f"<b>{html.escape(d)}</b>" for d in sets)
    return (f"<p>Data set{'s' if len(sets) > 1 else ''}: {data}. Results as measured, losses included:</p>"
            f"<ul>{''.join(items)}</ul>")


def _table_html(table: list[dict], hd: dict) -> str:
    head = ("<tr><th class='l'>arch</th><th class='l'>initialisation</th><th>labelled cases</th><th>n</th>"
            "<th>Dice</th><th>95% CI</th><th>gain vs random</th><th>HD95 mm</th></tr>")
    body = []
    for r in table:
        g = r["gain"]
        gain = "" if math.isnan(g) else f"<span class='{'pos' if g > 0 else ('neg' if g < 0 else '')}'>{g:+.3f}</span>"
        h = hd.get((r["arch"], r["method"], r["labelled_cases"]))
        body.append(f"<tr class='{'best' if r['best'] else ''}'><td class='l'>{html.escape(r['arch'])}</td>"
                    f"<td class='l'>{html.escape(_label(r['method']))}{' ★' if r['best'] else ''}</td>"
                    f"<td>{r['labelled_cases']}</td><td>{r['n']}</td><td>{_fmt(r['mean'])}</td>"
                    f"<td>[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]</td><td>{gain}</td>"
                    f"<td>{_fmt(h['mean'], 2) if h else '–'}</td></tr>")
    return f"<table>{head}{''.join(body)}</table><p class='note'>★ best Dice at that number of labelled cases.</p>"


def _tests_html(tests: list[dict]) -> str:
    if not tests:
        return "<p class='note'>No pretrained method alongside random init in this sweep.</p>"
    head = ("<tr><th class='l'>arch</th><th class='l'>method</th><th>labelled cases</th><th>pairs</th>"
            "<th>mean Dice difference</th><th>95% CI</th><th>wins</th><th>Wilcoxon p</th></tr>")
    body = [f"<tr><td class='l'>{html.escape(t['arch'])}</td><td class='l'>{html.escape(t['method'])}</td>"
            f"<td>{t['labelled_cases']}</td><td>{t['n']}</td><td>{t['mean_diff']:+.3f}</td>"
            f"<td>[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]</td><td>{t['wins']}/{t['n']}</td>"
            f"<td>{_fmt(t['p_value'], 3)}</td></tr>" for t in tests]
    return (f"<table>{head}{''.join(body)}</table><p class='note'>Pairs are matched on (seed, test case); "
            "the difference is method minus random init.</p>")


def _env_html() -> str:
    import lightning
    import monai
    import torch

    from .. import __version__

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    items = {"sslseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "monai": monai.__version__, "lightning": lightning.__version__, "platform": platform.platform(),
             "device": dev}
    return "<table>" + "".join(f"<tr><td class='l'>{k}</td><td class='l'>{html.escape(str(v))}</td></tr>"
                               for k, v in items.items()) + "</table>"


def _read(p: Path) -> str:
    return p.read_text() if p.exists() else "(missing)"
