"""The label-efficiency study as one resumable command: ``sslseg sweep CONFIG.yaml --out DIR``.

For each data set x architecture x pretraining method x label budget x seed:
pretrain once per (data set, method, architecture, seed) and reuse it for every budget
(or once per (data set, method, architecture) with ``pretrain_seed``, shared by every seed),
fine-tune on the budget's labelled cases, evaluate on the fixed test cases and
append tidy rows to ``results.csv``. Plus the supervised baseline: every
labelled training case, random initialisation, stronger augmentation.

``jobs: N`` fine-tunes N runs at once in separate processes (each on its share
of the cores; its console output goes to the run's ``output.txt``) once the
pretraining runs they need are done.

Resumable: a run writes ``rows.csv`` then, atomically, ``done.json``; on restart
finished runs are skipped, an unfinished one is redone (its loop resumes from
``last.pt``), and ``results.csv`` is rebuilt from the finished runs, so no row is
ever missing or written twice.

A sweep grows: with more seeds, budgets, methods, modes or archs in its YAML and
the same ``--out``, the finished runs whose config is unchanged (each run folder's
``config.yaml``, and its pretraining run's) are kept and only the new runs train;
a change that would alter a kept run is refused, naming the keys, before anything
trains. Each run holds its folder's lock (:func:`sslseg.experiments.runfolder.claim`)
while it trains.

Layout::

    DIR/config.yaml            the resolved sweep config
    DIR/splits/splits.json     the per-case train/val/test split
    DIR/splits/labelled_<budget>_seed<s>.json   nested labelled subsets
    DIR/pretrain/<method>_<arch>_seed<s>/       pretraining runs
    DIR/runs/<method>_<arch>_<budget>_seed<s>/  fine-tuning runs (rows.csv, done.json)
    DIR/results.csv, DIR/figures/*.png, DIR/report.html

With several data sets (``data: [synthetic-echo, {spec: synthetic-mri, options:
{num_cases: 8}}]``) each has its own split and subsets under
``splits/<data>/``, and its pretraining and run folders are prefixed with
``<data>_`` (the spec with ``:`` and ``/`` made safe).

The parts: :mod:`.sweep_config` (the schema and its checks), :mod:`.sweep_plan` (the runs a config asks
for and their folders, :func:`~.sweep_plan.run_key`), this module (running them, here or in a process
pool, and gathering ``results.csv``), :mod:`sslseg.report.compare` (the report's side-by-side predictions).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..data.splits import labelled_subset, read_json, write_json
from ..engine.checkpoint import load_checkpoint
from ..errors import UserError
from ..evaluate.postprocess import parse_steps
from ..io.tables import write_table
from ..report.compare import save_comparison
from .config import dump_yaml, load_yaml, stage_dict
from .pipeline import by_split, load_cases, run_evaluate, run_finetune, run_pretrain
from .provenance import write_provenance
from .sweep_config import (
    SweepConfig,
    data_tag,
    datasets,
    load_sweep_config,
    run_config,
    sweep_config,
    sweep_dict,
)
from .sweep_plan import budget_tag, finetune_config, plan, pretrain_config, run_dir, run_key

# dice/hd95: the case's primary scores under its convention (3D per volume for slices, frame mean for
# cines); the per-frame means, EchoNet's pooled-Dice terms and the HD95 penalty count beside them
RESULT_KEYS = ["method", "init", "mode", "arch", "dataset", "budget", "labelled_cases", "seed", "case_id", "dice", "hd95",
               "frames", "hd95_undefined", "run", "convention", "dice_frames", "hd95_frames", "dice_pooled",
               "overlap", "total", "hd95_penalised", "empty_truth_fp", "val_dice"]
#: columns a sweep from before fine-tuning modes did not write (its rows read as supervised)
OPTIONAL_KEYS = ("init", "mode", "val_dice")


def run_sweep(config_path: str | Path | SweepConfig, out_dir: str | Path, overrides: list[str] | None = None,
              write_report_at_end: bool = True) -> Path:
    """Run (or resume) a sweep; returns the path of ``results.csv``."""
    out = Path(out_dir)
    sw = config_path if isinstance(config_path, SweepConfig) else load_sweep_config(config_path, overrides)
    saved = out / "config.yaml"
    if saved.exists():
        _check_scoring(_previous(saved), sw, out)

    sets = datasets(sw)
    todo = []  # per data set: its cases, its runs, its labelled subsets
    for spec, options in sets:
        tag = data_tag(spec) if len(sets) > 1 else ""
        split_dir = out / "splits" / tag if tag else out / "splits"
        base = run_config(sw, sw.archs[0], sw.seeds[0], (spec, options))
        cases = load_cases(base, splits_path=split_dir / "splits.json")
        train = by_split(cases, "train")
        train_ids = [c.case_id for c in train if c.masks]
        # unlabelled frames beside k labelled cases: unselected cases, cases without masks, unlabelled frames
        frames_beside = any(c.num_frames > len(c.labelled_indices) for c in train)

        n_train = len(train_ids)
        try:
            runs = [{**r, "data": tag, "spec": spec, "options": options}
                    for r in plan(sw, n_train, lambda k, n=n_train, more=frames_beside: more or k < n)]
        except ValueError as e:
            raise UserError(f"sweep, data set {spec}: {e}") from None
        # nested labelled subsets, drawn once per (budget, seed), saved and reused
        subsets: dict[tuple[str, int], list[str]] = {}
        for r in runs:
            key = (r["budget"], r["seed"])
            if key in subsets:
                continue
            path = split_dir / f"labelled_{budget_tag(r['budget'])}_seed{r['seed']}.json"
            if path.exists():
                subsets[key] = list(read_json(path)["case_ids"])
            else:
                subsets[key] = labelled_subset(train_ids, r["k"], r["seed"])
                write_json(path, {"budget": r["budget"], "seed": r["seed"], "num_cases": r["k"],
                                  "case_ids": subsets[key]})
        todo.append((cases, runs, subsets))
    # a sweep grows: finished runs whose config is unchanged are kept, new ones run; a change that would make
    # a kept run's rows stale is refused, naming its keys, before anything is written
    _check_unchanged(sw, [r for _, runs, _ in todo for r in runs], out)
    dump_yaml(sweep_dict(sw), saved)
    write_provenance(out)  # the command line, commit and packages of the latest invocation

    total = sum(len(runs) for _, runs, _ in todo)
    done = sum((run_dir(out, r) / "done.json").exists() for _, runs, _ in todo for r in runs)
    # initial=done: runs finished before a restart do not count towards the speed (and the ETA)
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", position=0, dynamic_ncols=True, disable=None)
    planned = {run_key(r) for _, runs, _ in todo for r in runs}
    if sw.jobs > 1:
        _run_parallel(sw, todo, out, bar, done, total)
    else:
        for cases, runs, subsets in todo:
            for r in runs:
                folder = run_dir(out, r)
                if (folder / "done.json").exists():
                    continue
                bar.set_postfix_str(run_key(r))
                if bar.disable:  # no bar on a file or pipe: a plain line per run
                    print(f"sweep: run {done + 1}/{total}: {run_key(r)}", flush=True)
                _run_one(sw, r, cases, subsets[(r["budget"], r["seed"])], folder, out)
                collect_results(out, planned)
                bar.update(1)
                done += 1
    bar.close()
    results = collect_results(out, planned)
    for cases, runs, _ in todo:
        for arch in sw.archs:
            save_comparison(out, [{**r, "run": run_key(r)} for r in runs if r["arch"] == arch], cases,
                            parse_steps(sw.postprocess))
    if write_report_at_end:
        from ..report.html import write_report

        write_report(out)
    return results


def _previous(saved: Path) -> SweepConfig:
    """The config a sweep folder's earlier invocation saved (older spellings read silently)."""
    try:
        return sweep_config(load_yaml(saved), str(saved), quiet=True)
    except ValueError as err:
        raise UserError(f"{saved} cannot be read as a sweep config ({err}); use a new --out") from None


def _check_scoring(prev: SweepConfig, sw: SweepConfig, out: Path) -> None:
    """Refuse a change of how runs are scored (``evaluate``, ``postprocess``) once a run has finished:
    the kept runs' rows would be scored one way and the new ones another."""
    if not any((out / "runs").glob("*/done.json")):
        return
    changed = []
    try:
        old_eval = asdict(run_config(prev, prev.archs[0], prev.seeds[0]).evaluate)
    except ValueError:
        old_eval = None  # an earlier config that no longer resolves: its runs are checked one by one
    if old_eval is not None:
        new_eval = asdict(run_config(sw, sw.archs[0], sw.seeds[0]).evaluate)
        changed += [f"evaluate.{k}: {old_eval[k]!r} there, {v!r} now" for k, v in new_eval.items() if old_eval[k] != v]
    if parse_steps(prev.postprocess) != parse_steps(sw.postprocess):
        changed.append(f"postprocess: {prev.postprocess!r} there, {sw.postprocess!r} now")
    if changed:
        raise UserError(f"{out} holds runs scored with another config ({'; '.join(changed)}); every finished run "
                        "would change: undo the change or use a new --out")


def _check_unchanged(sw: SweepConfig, runs: list[dict], out: Path) -> None:
    """Refuse, in one line naming the changed keys, when a run folder of the sweep (fine-tuning or pretraining)
    holds a run made with another config than the one the sweep now asks of it."""
    from .runfolder import config_differences, read_config

    changed: dict[str, str] = {}  # key -> "old there, new now"
    where: list[str] = []
    seen_pre: set[Path] = set()
    for r in runs:
        folders = [(run_dir(out, r), lambda r=r: stage_dict(finetune_config(sw, r, out), "finetune"))]
        if r["kind"] == "finetune" and r["init"] != "none" and run_dir(out, r, "pretrain") not in seen_pre:
            seen_pre.add(run_dir(out, r, "pretrain"))
            folders.append((run_dir(out, r, "pretrain"), lambda r=r: stage_dict(pretrain_config(sw, r), "pretrain")))
        for folder, request in folders:
            saved = read_config(folder / "config.yaml")
            if saved is None:
                continue
            diffs = config_differences(saved, request())
            for key, old, new in diffs:
                changed.setdefault(key, f"{old!r} there, {new!r} now")
            if diffs:
                where.append(str(folder.relative_to(out)))
    if changed:
        keys = "; ".join(f"{k}: {v}" for k, v in changed.items())
        raise UserError(f"{out} holds {len(where)} run(s) made with another config ({keys}; e.g. {where[0]}): "
                        "a sweep reuses a run only where its config is unchanged (more seeds, budgets, methods "
                        "or modes add runs); undo the change or use a new --out")



def _run_one(sw: SweepConfig, r: dict, cases, labelled: list[str], folder: Path, out: Path) -> None:
    """Fine-tune, evaluate and record one run, holding its folder's lock; ``done.json`` is written last."""
    from .runfolder import claim

    if r["kind"] == "finetune" and r["init"] != "none":
        _pretrained(sw, r, cases, out)
    rc = finetune_config(sw, r, out, stage="finetune")
    with claim(folder, stage_dict(rc, "finetune")):  # a second process (sslseg finetune --out here) is refused
        ckpt = run_finetune(rc, folder, cases, labelled_ids=labelled)
        per_case = run_evaluate(ckpt, cases, "test", folder, rc.evaluate.convention, rc.evaluate.hd95_empty,
                                postprocess=parse_steps(sw.postprocess))
        # the run's best validation Dice (what chose its checkpoint): recipe choices read this, never the test
        val = load_checkpoint(ckpt).get("best_val") or {}
        rows = [{"method": r["method"], "init": r["init"], "mode": r["mode"], "arch": r["arch"], "dataset": r["spec"],
                 "budget": r["budget"], "labelled_cases": r["k"], "seed": r["seed"], **pc, "run": run_key(r),
                 "val_dice": val.get("dice", math.nan)} for pc in per_case]
        write_table(folder / "rows.csv", rows)
        write_json(folder / "done.json", {"rows": len(rows)})  # the completion marker, written last


def _pretrained(sw: SweepConfig, r: dict, cases, out: Path) -> Path:
    """The pretraining checkpoint fine-tuning run ``r`` starts from, pretrained first (holding its folder's
    lock) when missing."""
    from .runfolder import claim

    pre_dir = run_dir(out, r, "pretrain")
    ckpt = pre_dir / "checkpoint.pt"
    if not ckpt.exists():
        pc = pretrain_config(sw, r)
        with claim(pre_dir, stage_dict(pc, "pretrain")):
            run_pretrain(pc, pre_dir, cases)
    return ckpt


# the worker processes' share of the sweep (set by _init_worker: fork inherits it, spawn pickles it once)
_WORKER: dict = {}


def _init_worker(sw: SweepConfig, out: Path, cases_by_data: dict, threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)
    _WORKER.update(sw=sw, out=out, cases=cases_by_data)


def _die_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker process when the sweep's main process ``parent`` ends, however it ends.

    A killed main process cannot close its pool: its workers would go on training (and holding their run
    folders' locks, and the sweep folder's, inherited) for minutes. On Linux the kernel sends SIGKILL when
    the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and as a second guard, a thread checks every
    ``every`` seconds whether this process was handed to another parent.
    """
    import os
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: the thread alone
            pass
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="sslseg-parent-watch", daemon=True).start()


def _worker_run(r: dict, labelled: list[str]) -> str:
    """One fine-tuning run in a worker process; its console output goes to the run's ``output.txt``."""
    import contextlib

    folder = run_dir(_WORKER["out"], r)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "output.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        _run_one(_WORKER["sw"], r, _WORKER["cases"][r["data"]], labelled, folder, _WORKER["out"])
    return run_key(r)


def _run_parallel(sw: SweepConfig, todo: list, out: Path, bar, done: int, total: int) -> None:
    """Pretrain what is missing here, one run at a time on every core, then fine-tune ``sw.jobs`` runs at once."""
    import multiprocessing as mp
    import os
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ..engine.distributed import usable_cores

    pending = []
    for cases, runs, subsets in todo:
        for r in runs:
            if (run_dir(out, r) / "done.json").exists():
                continue
            if r["kind"] == "finetune" and r["init"] != "none":
                _pretrained(sw, r, cases, out)
            pending.append((r, subsets[(r["budget"], r["seed"])]))
    if not pending:
        return
    cores = usable_cores()
    threads = max(1, cores // sw.jobs)
    # fork shares the cases with the workers at no cost; spawn pickles them once: on macOS and Windows,
    # and with CUDA, which cannot be used again in a forked child once the parent has touched it
    import torch

    fork = "fork" in mp.get_all_start_methods() and not _is_macos() and not torch.cuda.is_available()
    ctx = mp.get_context("fork" if fork else "spawn")
    cases_by_data = {runs[0]["data"]: cases for cases, runs, _ in todo if runs}
    print(f"sweep: fine-tuning {len(pending)} runs, {sw.jobs} at a time ({threads} thread(s) each); "
          "each run's output goes to its output.txt", flush=True)
    pool = ProcessPoolExecutor(max_workers=sw.jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(sw, out, cases_by_data, threads, os.getpid()))
    # SIGTERM (kill, a scheduler's time limit) ends this process through the handler below, so the
    # workers are stopped with it rather than left training
    term = signal.signal(signal.SIGTERM, _exit_on_term) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        futures = {pool.submit(_worker_run, r, labelled): r for r, labelled in pending}
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for f in finished:
                r = futures[f]
                try:
                    f.result()
                except Exception:
                    for other in remaining:
                        other.cancel()
                    print(f"sweep: run {run_key(r)} failed; its output: "
                          f"{run_dir(out, r) / 'output.txt'}", flush=True)
                    raise
                done += 1
                collect_results(out, {run_key(r) for _, runs, _ in todo for r in runs})
                bar.update(1)
                if bar.disable:
                    print(f"sweep: run {done}/{total} done: {run_key(r)}", flush=True)
    except (KeyboardInterrupt, SystemExit):
        # interrupted: stop the runs in flight now (each resumes from its last.pt), not after minutes
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=True)  # a failed run: the runs in flight finish first, their rows kept
        raise
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
    pool.shutdown(wait=True)


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _is_macos() -> bool:
    import sys

    return sys.platform == "darwin"


def collect_results(out: str | Path, runs: set[str] | None = None) -> Path:
    """Rebuild ``results.csv`` from every finished run's ``rows.csv`` (atomic).

    Args:
        runs: the run folders to gather (:func:`run_key`), those of the sweep's config; None: every one
            (a sweep's YAML with fewer seeds, budgets or methods than before reports those only).
    """
    out = Path(out)
    rows = []
    for done in sorted((out / "runs").glob("*/done.json")):
        if runs is not None and done.parent.name not in runs:
            continue
        with open(done.parent / "rows.csv", newline="") as f:
            rows.extend(csv.DictReader(f))
    return write_table(out / "results.csv", rows, RESULT_KEYS, extrasaction="ignore")
