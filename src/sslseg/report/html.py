"""``sslseg report DIR``: one self-contained ``report.html`` (figures embedded) from a sweep folder."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import yaml

from .plots import dice_vs_labels, overlays, subset_gains_figure, training_curves
from .stats import format_p
from .tables import (
    REFERENCE,
    gain_word,
    paired_tests,
    pretrained_alone,
    subset_gains,
    summary_table,
    within_noise,
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
td.l,th.l{text-align:left} tr.best td{font-weight:600;background:#eef8ee}
.neg{color:#b3261e}.pos{color:#1b7a2e} img{max-width:100%;height:auto}
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
                                        labels=labels)

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
        "<p class='note'>Mean over test cases and seeds; bands: 95% bootstrap CI over test cases. The "
        "supervised baseline (every labelled case) is the dashed level.</p></section>",
        f"<section id='hd95-curve'><h2>HD95 vs labelled cases</h2>{_img(hd_png, 'HD95 vs labelled cases')}"
        "<p class='note'>95th-percentile Hausdorff distance in mm (lower is better). "
        f"{_penalty_note(rows)}</p></section>",
        f"<section id='table'><h2>Mean ± 95% CI per method and budget</h2>{_table_html(table, hd_table, gains)}"
        "</section>",
        "<section id='overlays'><h2>Every method on the same frames</h2>"
        + ("".join(ov_html) or "<p class='note'>No figure: overlays (no finished run).</p>")
        + "<p class='note'>Rows: the best, median and worst labelled test frame for random init at the "
        "smallest budget (first seed); columns: each initialisation on those frames. Each title gives "
        "that frame's own Dice.</p></section>",
        f"<section id='training-curves'><h2>Training curves</h2>{_img(curves_png, 'training curves')}"
        f"{_peaks_html(peaks, info)}</section>",
        f"<section id='paired-tests'><h2>Test-case level (secondary)</h2>{_tests_html(tests)}</section>",
        f"<section id='config'><h2>Resolved config</h2>{_config_html(out)}</section>",
        f"<section id='environment'><h2>Environment</h2>{_env_html(out)}</section>",
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


def _summary(table: list[dict], gains: list[dict], rows: list[dict]) -> str:
    items = []
    for g in gains:
        d = g["mean_gain"]
        word = gain_word(d)
        cls = "pos" if d > 0 else ("neg" if d < 0 else "")
        if g["n"] >= 2:
            detail = (f"95% CI across {g['n']} labelled subsets {_s(g['ci_low'])} to {_s(g['ci_high'])}; "
                      f"ahead on {g['wins']}/{g['n']}; paired t-test {format_p(g['p_value'])}{within_noise(g)}")
        else:
            detail = "one labelled subset: no interval, no test"
        items.append(f"<li class='{cls}'><b>{html.escape(g['method'])}</b> ({html.escape(g['arch'])}) {word} random "
                     f"init by {abs(d):.3f} Dice at {g['labelled_cases']} labelled case(s) [{detail}]</li>")
    sup = [t for t in table if t["method"] == "supervised"]
    for s in sup:
        items.append(f"<li>Supervised baseline ({html.escape(s['arch'])}, all {s['labelled_cases']} labelled cases, "
                     f"random init): Dice {s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]</li>")
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
    return (f"<p>Data set{'s' if len(sets) > 1 else ''}: {data}. Each gain is paired by labelled subset (seed): "
            f"the same labelled cases with and without pretraining. Results as measured, losses included:</p>"
            f"{warn}<ul>{''.join(items)}</ul>")


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
            f"<th>Dice</th><th>{reference}</th><th>gain</th><th>95% CI (t)</th><th>ahead on</th>"
            "<th>paired t-test</th><th class='l'>gain per subset</th></tr>")
    body = []
    for g in gains:
        d = g["mean_gain"]
        ci = f"[{_s(g['ci_low'])}, {_s(g['ci_high'])}]" if g["n"] >= 2 else "–"
        per = ", ".join(f"seed {s}: {_s(v)}" for s, v in g["gains"].items())
        body.append(f"<tr><td class='l'>{html.escape(g['arch'])}</td><td class='l'>{html.escape(g['method'])}</td>"
                    f"<td>{g['labelled_cases']}</td><td>{g['n']}</td><td>{_fmt(g['method_mean'])}</td>"
                    f"<td>{_fmt(g['ref_mean'])}</td><td class='{'pos' if d > 0 else ('neg' if d < 0 else '')}'>"
                    f"{_s(d)}</td><td>{ci}</td><td>{g['wins']}/{g['n']}</td><td>{format_p(g['p_value'])}</td>"
                    f"<td class='l'>{html.escape(per)}</td></tr>")
    return (f"<table>{head}{''.join(body)}</table><p class='note'>Per labelled subset (seed): mean test Dice of "
            "the method minus that of random init fine-tuned on the same labelled cases. Interval: Student t "
            "across subsets; test: paired t-test across subsets (two-sided).</p>")


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


def _table_html(table: list[dict], hd: dict, gains: list[dict]) -> str:
    head = ("<tr><th class='l'>arch</th><th class='l'>initialisation</th><th>labelled cases</th><th>test rows</th>"
            "<th>Dice</th><th>95% CI</th><th>gain vs random</th><th>HD95 mm</th></tr>")
    paired = {(g["arch"], g["method"], g["labelled_cases"]): g["mean_gain"] for g in gains}
    body = []
    for r in table:
        g = paired.get((r["arch"], r["method"], r["labelled_cases"]), math.nan)
        gain = "" if math.isnan(g) else f"<span class='{'pos' if g > 0 else ('neg' if g < 0 else '')}'>{_s(g)}</span>"
        h = hd.get((r["arch"], r["method"], r["labelled_cases"]))
        body.append(f"<tr class='{'best' if r['best'] else ''}'><td class='l'>{html.escape(r['arch'])}</td>"
                    f"<td class='l'>{html.escape(_label(r['method']))}{' ★' if r['best'] else ''}</td>"
                    f"<td>{r['labelled_cases']}</td><td>{r['n']}</td><td>{_fmt(r['mean'])}</td>"
                    f"<td>[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]</td><td>{gain}</td>"
                    f"<td>{_fmt(h['mean'], 2) if h else '–'}</td></tr>")
    return (f"<table>{head}{''.join(body)}</table><p class='note'>★ best Dice at that number of labelled cases. "
            "Interval: bootstrap over test cases (all seeds pooled); gain: mean of the gains paired by labelled "
            "subset.</p>")


def _tests_html(tests: list[dict]) -> str:
    if not tests:
        return "<p class='note'>No pretrained method alongside random init in this sweep.</p>"
    head = ("<tr><th class='l'>arch</th><th class='l'>method</th><th>labelled cases</th><th>pairs</th>"
            "<th>mean Dice difference</th><th>95% CI</th><th>wins</th><th>Wilcoxon</th></tr>")
    body = [f"<tr><td class='l'>{html.escape(t['arch'])}</td><td class='l'>{html.escape(t['method'])}</td>"
            f"<td>{t['labelled_cases']}</td><td>{t['n']}</td><td>{_s(t['mean_diff'])}</td>"
            f"<td>[{_s(t['ci_low'])}, {_s(t['ci_high'])}]</td><td>{t['wins']}/{t['n']}</td>"
            f"<td>{format_p(t['p_value'])}</td></tr>" for t in tests]
    return (f"<table>{head}{''.join(body)}</table><p class='note'>Pairs are matched on (seed, test case); "
            "the difference is method minus random init. Test cases of one labelled subset share that subset's "
            "luck, so these intervals and p-values are too optimistic about another draw of labelled cases: "
            "read the gains by labelled subset above first.</p>")


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
        from ..experiments.provenance import environment

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
