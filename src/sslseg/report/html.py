"""``sslseg report DIR``: one self-contained ``report.html`` (figures embedded) from a sweep folder."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import yaml

from ..errors import UserError
from ..io.files import atomic_write
from .plots import dice_vs_labels, overlays, subset_gains_figure, training_curves
from .stats import VERDICTS, format_p
from .tables import (
    REFERENCE,
    clip_ci,
    gain_sentence,
    gain_verdict,
    paired_tests,
    pretrained_alone,
    subset_gains,
    summary_table,
)

SECTIONS = ("summary", "gains", "dice-curve", "hd95-curve", "table", "overlays", "training-curves",
            "paired-tests", "config", "environment")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.6rem;margin:.2em 0} h2{font-size:1.15rem;margin-top:2em;border-bottom:1px solid #d8dce3;padding-bottom:.3em}
section{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:8px 20px 16px;margin-top:18px}
table{border-collapse:collapse;font-size:.9rem;margin:.5em 0}
th,td{padding:4px 10px;border-bottom:1px solid #eceef2;text-align:right} th{background:#f0f2f5}
td.l,th.l{text-align:left} td:not(.l){white-space:nowrap}
.gain{color:#0072b2}.loss{color:#b84d00}.unclear,.single{color:#4a4f59} img{max-width:100%;height:auto}
.tag{display:inline-block;font-size:.75rem;font-weight:600;border:1px solid currentColor;border-radius:4px;
padding:0 5px;margin-right:6px}
pre{background:#f3f4f6;padding:10px;border-radius:6px;overflow-x:auto;font-size:.8rem}
.note{color:#555;font-size:.85rem} nav a{margin-right:12px;font-size:.85rem}
.warn{background:#fff4e5;border-left:4px solid #e8a33d;padding:8px 12px;margin:.6em 0}
details{margin:.3em 0} summary{cursor:pointer;font-size:.9rem}
"""


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return f"<p class='note'>No figure: {html.escape(alt)} (not enough data).</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _fmt(x: float, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _s(x: float) -> str:
    """Signed to 3 decimals, with no ``-0.000``."""
    return f"{round(x, 3) + 0.0:+.3f}"


def _label(m: str) -> str:
    return "random init" if m == REFERENCE else m


def write_report(sweep_dir: str | Path) -> Path:
    """Write ``DIR/report.html`` and ``DIR/figures/*.png`` from ``DIR/results.csv`` and the run folders."""
    out = Path(sweep_dir)
    res = out / "results.csv"
    if not res.exists():
        raise UserError(f"{res} not found; run `sslseg sweep` first")
    rows = list(csv.DictReader(open(res, newline="")))
    if not rows:
        raise UserError(f"{res} has no finished run yet")
    sets = sorted({r["dataset"] for r in rows})
    if len(sets) > 1:
        # several data sets: every table, curve and test is per (data set, arch), shown as the arch column
        rows = [{**r, "arch": f"{r['arch']} · {r['dataset']}"} for r in rows]
    figs = out / "figures"
    dice_png = dice_vs_labels(rows, figs / "dice_vs_labels.png", "dice")
    hd_png = dice_vs_labels(rows, figs / "hd95_vs_labels.png", "hd95")
    table = summary_table(rows, "dice")
    hd_table = {(r["arch"], r["method"], r["labelled_cases"]): r for r in summary_table(rows, "hd95")}
    gains = subset_gains(rows, "dice")
    gains_png = subset_gains_figure(gains, figs / "gains_by_subset.png")
    tests = paired_tests(rows, "dice")

    # every method on the same frames, one figure per data set and arch (written by the sweep)
    ov_html = []
    for npz in sorted((out / "examples").glob("*.npz")):
        png = overlays(npz, figs / f"overlays_{npz.stem}.png", npz.stem.replace("_", " · "))
        ov_html.append(_img(png, f"overlays {npz.stem}"))
    info = {r["run"]: r for r in rows}
    labels = {run: (f"{_label(r['method'])}, {r['labelled_cases']} labelled", f"seed {r['seed']}")
              for run, r in info.items()}
    curves_png, peaks = training_curves([p.parent for p in (out / "runs").glob("*/done.json")],
                                        figs / "training_curves.png",
                                        pretrain_dirs=[p for p in (out / "pretrain").glob("*") if p.is_dir()],
                                        labels=labels, methods={run: r["method"] for run, r in info.items()})

    summary = _summary(table, gains, rows)
    body = [
        "<h1>sslseg label-efficiency report</h1>",
        f"<p class='note'>{html.escape(str(out.resolve()))} · {len({r['run'] for r in rows})} runs · "
        f"{len(rows)} rows in results.csv</p>",
        "<nav>" + "".join(f"<a href='#{s}'>{s.replace('-', ' ')}</a>" for s in SECTIONS) + "</nav>",
        f"<section id='summary'><h2>Does pretraining pay off?</h2>{summary}</section>",
        f"<section id='gains'><h2>Gain over random init, by labelled subset</h2>"
        f"{_img(gains_png, 'gain over random init by labelled subset')}{_gains_html(gains)}"
        f"{_over_pretraining_html(subset_gains(rows, 'dice', pretrained_alone))}</section>",
        f"<section id='dice-curve'><h2>Dice vs labelled cases</h2>{_img(dice_png, 'Dice vs labelled cases')}"
        f"<p class='note'>{_curve_note(table)} The supervised baseline (every labelled case) is the dashed "
        "level.</p></section>",
        f"<section id='hd95-curve'><h2>HD95 vs labelled cases</h2>{_img(hd_png, 'HD95 vs labelled cases')}"
        "<p class='note'>95th-percentile Hausdorff distance in mm (lower is better). "
        f"{_curve_note(table)} {_penalty_note(rows)}</p></section>",
        f"<section id='table'><h2>Mean and 95% CI across labelled subsets, per method and budget</h2>"
        f"{_table_html(table, hd_table)}</section>",
        "<section id='overlays'><h2>Every method on the same frames</h2>"
        + ("".join(ov_html) or "<p class='note'>No figure: overlays (no finished run).</p>")
        + "<p class='note'>Rows: the best, median and worst labelled test frame for random init at the "
        "smallest budget (first seed); columns: each initialisation on those frames. Each title gives "
        "that frame's own Dice.</p></section>",
        f"<section id='training-curves'><h2>Training curves</h2>{_img(curves_png, 'training curves')}"
        f"{_peaks_html(peaks, info)}</section>",
        f"<section id='paired-tests'><h2>Test-case level (secondary): subsets, then cases</h2>"
        f"{_tests_html(tests)}</section>",
        f"<section id='config'><h2>Resolved config</h2>{_config_html(out)}</section>",
        f"<section id='environment'><h2>Environment</h2>{_env_html(out)}</section>",
    ]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sslseg report</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>")
    path = out / "report.html"
    with atomic_write(path) as f:
        f.write(page)
    return path


def _penalty_note(rows: list[dict]) -> str:
    """How the HD95 convention touched these rows: penalised HD95s."""
    def count(key: str) -> int:
        return int(sum(float(r.get(key) or 0) for r in rows))

    convs = sorted({r.get("convention") for r in rows if r.get("convention")})
    if not convs:  # results.csv written before the conventions were recorded
        return "Cases where it is undefined (empty prediction) are counted in results.csv, not averaged."
    text = (f"Scored per {' and per '.join(convs)} (README, 'How we score'). An HD95 left undefined by an empty "
            f"prediction (or truth) is penalised with the image diagonal in mm: {count('hd95_penalised')} time(s) "
            f"in {len(rows)} rows ({count('hd95_undefined')} undefined).")
    return text


def _span(values) -> str:
    """``3`` or ``2 to 5``: the range of a set of counts."""
    values = sorted(set(values))
    return f"{values[0]}" if len(values) == 1 else f"{values[0]} to {values[-1]}"


def _curve_note(table: list[dict]) -> str:
    n = _span(t["subsets"] for t in table)
    return (f"Each point: the mean over the {n} labelled subset(s) (seeds) of a subset's mean over its "
            f"{_cases_text(table)}; band: the 95% Student-t interval across labelled subsets, the headline's "
            "unit (no band with one subset), clipped where it runs past the axis (▲▼ at the edge). Bands of two "
            "methods may overlap where the paired gain above is clear: the pairing by subset removes the luck of "
            "the draw they share. The x axis (labelled training cases) is on a log2 scale when the budgets span "
            "more than a doubling.")


def _cases_text(table: list[dict]) -> str:
    return f"{_span(t['cases'] for t in table)} test cases"


def _verdict_tag(v: str) -> str:
    return f"<span class='tag'>{VERDICTS[v]}</span>" if v in VERDICTS else ""


def _summary(table: list[dict], gains: list[dict], rows: list[dict]) -> str:
    items = []
    for g in gains:
        v = gain_verdict(g)
        text = gain_sentence(g)
        method = g["method"]
        rest = text[len(method):] if text.startswith(method) else " " + text
        items.append(f"<li class='{v}'>{_verdict_tag(v)}<b>{html.escape(method)}</b> ({html.escape(g['arch'])})"
                     f"{html.escape(rest)}</li>")
    frame = any(r.get("convention") == "frame" for r in rows)
    for s in (t for t in table if t["method"] == "supervised"):
        ci = f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}] across {s['subsets']} seeds" if s["subsets"] >= 2 else ""
        pooled = f"; pooled Dice {s['pooled']:.3f}" if frame and not math.isnan(s["pooled"]) else ""
        items.append(f"<li>Supervised baseline ({html.escape(s['arch'])}, all {s['labelled_cases']} labelled cases, "
                     f"random init): Dice {s['mean']:.3f}{ci}{pooled}</li>")
    if not items:
        items.append("<li>No pretrained method to compare with random initialisation.</li>")
    sets = sorted({r["dataset"] for r in rows})
    data = ", ".join(f"<b>{html.escape(d)}</b>" for d in sets)
    warn = ""
    if gains and min(g["n"] for g in gains) < 2:
        seeds = sorted({str(r["seed"]) for r in rows})
        warn = ("<div class='warn'><b>One labelled subset.</b> Each gain below comes from a single draw of "
                f"labelled cases (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}). Which cases are "
                "labelled moves Dice by more than most pretraining does, and the test cases of one subset share "
                "its luck, so neither an interval nor a test can be given. Add seeds (e.g. "
                "<code>seeds: [0, 1, 2, 3, 4]</code>) to see the spread.</div>")
    n_sub = _span({g["n"] for g in gains} or {t["subsets"] for t in table})
    return (f"<p>Data set{'s' if len(sets) > 1 else ''}: {data}; scored on {_cases_text(table)}, with "
            f"{n_sub} labelled subset(s) (seeds) per budget. Each gain is paired by labelled subset: the same "
            "labelled cases with and without pretraining. The words and colours follow the 95% interval across "
            "subsets: <span class='gain'>clear gain</span> or <span class='loss'>clear loss</span> when it "
            "excludes 0, <span class='unclear'>no clear difference</span> when it includes 0, whatever the "
            f"sign of the mean. Results as measured, losses included:</p>{warn}<ul>{''.join(items)}</ul>"
            + (_pooled_note(table) if frame else ""))


def _pooled_note(table: list[dict]) -> str:
    """Which Dice is which, for cines: the per-frame mean here, the pooled Dice that published echo numbers use."""
    diffs = [t["pooled"] - t["mean"] for t in table if not math.isnan(t["pooled"]) and not math.isnan(t["mean"])]
    lo, hi = (f"{min(diffs):+.3f}", f"{max(diffs):+.3f}") if diffs else ("", "")
    gap = "" if not diffs else f"; here {lo} above the per-frame mean" if lo == hi else f"; here {lo} to {hi} above it"
    return ("<p class='note'><b>Which Dice.</b> Dice above is the <i>per-frame</i> mean: each case's mean over "
            "its labelled frames, then the mean over test cases and subsets. Published echo numbers pool the "
            "frames, <i>pooled Dice</i> = 2·Σ|P∩G| / Σ(|P|+|G|): EchoNet-Dynamic's 0.92 pools its whole test "
            "split, and contrastive-echo's 0.9252 (EchoNet-Dynamic, 5% of the labels) pools each batch of 128 "
            "test frames. Set those beside the table's pooled Dice (each run's test frames pooled, then the mean "
            f"over subsets{gap}), not beside the per-frame mean.</p>")


def _over_pretraining_html(gains: list[dict]) -> str:
    """What a semi-supervised mode adds on top of the same pretraining, paired by labelled subset (or nothing)."""
    if not gains:
        return ""
    return ("<h3>Gain of semi-supervised fine-tuning over pretraining alone</h3>"
            + _gains_html(gains, "pretraining alone").replace(
                "that of random init fine-tuned", "that of the same pretrained encoder fine-tuned supervised"))


def _gains_html(gains: list[dict], reference: str = "random init") -> str:
    if not gains:
        return "<p class='note'>No pretrained method alongside random init in this sweep.</p>"
    head = ("<tr><th class='l'>arch</th><th class='l'>method</th><th>labelled cases</th><th>subsets</th>"
            f"<th>Dice</th><th>{reference}</th><th>gain</th><th>95% CI (t)</th><th class='l'>verdict</th>"
            "<th>ahead on</th><th>paired t-test</th><th class='l'>gain per subset</th></tr>")
    body = []
    for g in gains:
        v = gain_verdict(g)
        ci = f"[{_s(g['ci_low'])}, {_s(g['ci_high'])}]" if g["n"] >= 2 else "–"
        per = ", ".join(f"seed {s}: {_s(v)}" for s, v in g["gains"].items())
        body.append(f"<tr><td class='l'>{html.escape(g['arch'])}</td><td class='l'>{html.escape(g['method'])}</td>"
                    f"<td>{g['labelled_cases']}</td><td>{g['n']}</td><td>{_fmt(g['method_mean'])}</td>"
                    f"<td>{_fmt(g['ref_mean'])}</td><td class='{v}'>{_s(g['mean_gain'])}</td><td>{ci}</td>"
                    f"<td class='l {v}'>{VERDICTS[v]}</td><td>{g['wins']}/{g['n']}</td>"
                    f"<td>{format_p(g['p_value'])}</td><td class='l'>{html.escape(per)}</td></tr>")
    return (f"<table>{head}{''.join(body)}</table><p class='note'>Per labelled subset (seed): mean test Dice of "
            "the method minus that of random init fine-tuned on the same labelled cases. Interval: Student t "
            "across subsets; verdict: clear gain or clear loss when it excludes 0, else no clear difference; "
            "test: paired t-test across subsets (two-sided). The figure clips an interval that runs past its "
            "axis and writes where it ends.</p>")


def _peaks_html(peaks: list[dict], info: dict) -> str:
    if not peaks:
        return ("<p class='note'>Left: pretext loss of each pretraining run; middle and right: each fine-tuning "
                "run (one colour per initialisation and budget, seeds alike). No validation Dice peaked early "
                "and fell.</p>")
    items = "".join(
        f"<li><b>{html.escape(p['run'])}</b>: validation Dice peaked at step {p['peak_step']} ({p['peak']:.3f}) and "
        f"ended at {p['last']:.3f} at step {p['last_step']} (−{p['drop']:.3f})</li>" for p in peaks)
    return ("<div class='warn'><b>Validation Dice peaked early and fell</b> (▼ in the figure), a sign of "
            "over-fitting the few labelled cases. The checkpoint kept is the best on validation; a shorter "
            f"schedule or stronger augmentation may suit these budgets.<ul>{items}</ul></div>")


def _table_html(table: list[dict], hd: dict) -> str:
    pooled = any(not math.isnan(r["pooled"]) for r in table)
    head = ("<tr><th class='l'>arch</th><th class='l'>initialisation</th><th>labelled cases</th><th>subsets</th>"
            "<th>test cases</th><th>Dice</th><th>95% CI</th>" + ("<th>pooled Dice</th>" if pooled else "")
            + "<th>gain vs random</th><th>95% CI</th><th class='l'>verdict</th><th>HD95 mm</th></tr>")
    body = []
    for r in table:
        v = r["verdict"]
        gain = "" if math.isnan(r["gain"]) else f"<span class='{v}'>{_s(r['gain'])}</span>"
        gci = "" if math.isnan(r["gain_low"]) else f"[{_s(r['gain_low'])}, {_s(r['gain_high'])}]"
        lo, hi, _ = clip_ci(r["ci_low"], r["ci_high"])
        ci = "–" if math.isnan(lo) else f"[{_fmt(lo)}, {_fmt(hi)}]"
        h = hd.get((r["arch"], r["method"], r["labelled_cases"]))
        body.append(f"<tr><td class='l'>{html.escape(r['arch'])}</td>"
                    f"<td class='l'>{html.escape(_label(r['method']))}{' (clearly best)' if r['best'] else ''}</td>"
                    f"<td>{r['labelled_cases']}</td><td>{r['subsets']}</td><td>{r['cases']}</td>"
                    f"<td>{_fmt(r['mean'])}</td><td>{ci}</td>" + (f"<td>{_fmt(r['pooled'])}</td>" if pooled else "")
                    + f"<td>{gain}</td><td>{gci}</td><td class='l {v}'>{VERDICTS.get(v, '')}</td>"
                    f"<td>{_fmt(h['mean'], 2) if h else '–'}</td></tr>")
    dice = ("Dice: the per-frame mean (each case's mean over its labelled frames, then over the test cases) for "
            "cines, the 3D Dice for volumes; pooled Dice: 2·Σ|P∩G| / Σ(|P|+|G|) over every test frame of a run, "
            "the definition published echo numbers use. " if pooled else "")
    return (f"<table>{head}{''.join(body)}</table><p class='note'>{dice}Each value is the mean over labelled "
            "subsets (seeds) of a subset's mean over its test cases; 95% CI: Student t across subsets (– with one "
            "subset), clipped to [0, 1]; gain: paired by labelled subset, its verdict from its interval. <i>clearly best</i>: ahead of "
            "every other initialisation at that budget, each paired interval excluding 0; no row is marked when "
            "none is.</p>")


def _tests_html(tests: list[dict]) -> str:
    if not tests:
        return "<p class='note'>No pretrained method alongside random init in this sweep.</p>"
    head = ("<tr><th class='l'>arch</th><th class='l'>method</th><th>labelled cases</th><th>subsets</th>"
            "<th>pairs</th><th>mean Dice difference</th><th>95% CI (subsets, then cases)</th><th>ahead on</th></tr>")
    body = [f"<tr><td class='l'>{html.escape(t['arch'])}</td><td class='l'>{html.escape(t['method'])}</td>"
            f"<td>{t['labelled_cases']}</td><td>{t['subsets']}</td><td>{t['n']}</td><td>{_s(t['mean_diff'])}</td>"
            f"<td>[{_s(t['ci_low'])}, {_s(t['ci_high'])}]</td><td>{t['wins']}/{t['n']}</td></tr>" for t in tests]
    return (f"<table>{head}{''.join(body)}</table><p class='note'>Pairs are matched on (seed, test case); the "
            "difference is method minus random init. The interval is a two-level bootstrap: labelled subsets "
            "drawn with replacement, then test cases within each, so that test cases, which share their "
            "subset's luck, do not narrow it past what the subsets allow (with one subset it covers the test "
            "cases only). Read the gains by labelled subset above first.</p>")


def _config_html(out: Path) -> str:
    """The sweep's config, then every stage's resolved config and the values the code chose, one block per run."""
    parts = [f"<p class='note'>The sweep ({html.escape(str(out / 'config.yaml'))}):</p>"
             f"<pre>{html.escape(_read(out / 'config.yaml'))}</pre>"]
    for kind, folder in (("pretraining", "pretrain"), ("fine-tuning", "runs")):
        dirs = sorted(p for p in (out / folder).glob("*") if (p / "config.yaml").exists())
        if not dirs:
            continue
        parts.append(f"<h3>Each {kind} run ({len(dirs)}): config.yaml and the values the code resolved</h3>")
        for d in dirs:
            prov = _json(d / "provenance.json")
            resolved = prov.get("resolved") if prov else None
            extra = ("\n# resolved by the code (provenance.json):\n" + yaml.safe_dump(resolved, sort_keys=False)
                     if resolved else "")
            parts.append(f"<details><summary>{html.escape(d.name)}</summary>"
                         f"<pre>{html.escape(_read(d / 'config.yaml') + extra)}</pre></details>")
    return "".join(parts)


def _json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _env_html(out: Path) -> str:
    """The sweep's provenance (command line, git commit, packages); this process's environment when missing."""
    prov = _json(out / "provenance.json")
    note = ""
    if prov is None:
        from ..environment import environment

        prov = environment()
        note = "<p class='note'>No provenance.json in this folder: the environment of this report's process.</p>"
    commit = prov.get("git_commit") or "not a git work tree"
    if prov.get("git_dirty"):
        commit += " (with uncommitted changes)"
    items = {"command": prov.get("command"), "working folder": prov.get("cwd"), "when": prov.get("time"),
             "git commit": commit, "python": prov.get("python"), "platform": prov.get("platform"),
             "device": prov.get("device")}
    rows = "".join(f"<tr><td class='l'>{k}</td><td class='l'><code>{html.escape(str(v))}</code></td></tr>"
                   for k, v in items.items())
    pkgs = "".join(f"<tr><td class='l'>{html.escape(k)}</td><td class='l'>{html.escape(str(v or 'not installed'))}"
                   "</td></tr>" for k, v in (prov.get("packages") or {}).items())
    return (f"{note}<table>{rows}</table><h3>Packages</h3><table>{pkgs}</table><p class='note'>Each run folder "
            "holds its own provenance.json (the command that ran it, the commit, the packages).</p>")


def _read(p: Path) -> str:
    return p.read_text() if p.exists() else "(missing)"
