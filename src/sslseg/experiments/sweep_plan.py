"""The runs a sweep's config asks for (:func:`plan`), the folder each one lives in (:func:`run_key`, the one
place a run's name is made) and the config each one trains with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..data.splits import resolve_budget
from .config import RunConfig
from .sweep_config import SweepConfig, mode_label, run_config, split_label


def budget_tag(budget) -> str:
    return str(budget).replace("%", "pct")


def plan(sw: SweepConfig, n_train: int, unlabelled: Callable[[int], bool] | None = None) -> list[dict]:
    """Every fine-tuning run of the sweep, in order (budgets that exceed the data are refused).

    ``unlabelled(k)``: whether the training split holds unlabelled frames beside ``k`` labelled cases
    (resolves the mode ``auto``; default yes).
    """
    from ..finetune.modes import AUTO, resolve_mode

    runs = []
    for arch in sw.archs:
        for seed in sw.seeds:
            for label in sw.methods:
                method, own_mode = split_label(label)
                for budget in sw.budgets:
                    k = resolve_budget(budget, n_train)
                    has_unlabelled = unlabelled(k) if unlabelled is not None else True
                    seen = set()
                    for mode in ([own_mode] if "+" in label else sw.modes):
                        if mode == AUTO:
                            mode = resolve_mode(AUTO, int(has_unlabelled), k)
                        if mode in seen:  # auto resolved to a mode listed as well
                            continue
                        seen.add(mode)
                        runs.append({"arch": arch, "seed": int(seed), "method": mode_label(method, mode),
                                     "init": method, "mode": mode, "budget": str(budget), "k": k,
                                     "kind": "finetune", "pretrain_seed": sw.pretrain_seed})
            if sw.baseline.enabled:
                runs.append({"arch": arch, "seed": int(seed), "method": "supervised", "init": "none",
                             "mode": "supervised", "budget": "100%", "k": n_train, "kind": "baseline"})
    return runs



def run_key(r: dict, stage: str = "finetune") -> str:
    """The folder name of planned run ``r`` (a :func:`plan` row, with ``data`` when the sweep has several data
    sets): ``[<data>_]<method>_<arch>_<budget>_seed<s>`` under ``runs/`` (also the ``run`` column of
    ``results.csv``), or with ``stage="pretrain"`` ``[<data>_]<init>_<arch>_seed<s>`` under ``pretrain/``, the
    pretraining run it starts from (one per data set, method, arch and seed, or ``pretrain_seed``)."""
    prefix = f"{r['data']}_" if r.get("data") else ""
    if stage == "pretrain":
        seed = r["seed"] if r.get("pretrain_seed") is None else r["pretrain_seed"]
        return f"{prefix}{r['init']}_{r['arch']}_seed{seed}"
    if stage != "finetune":
        raise ValueError(f"stage {stage!r}: expected finetune or pretrain")
    return f"{prefix}{r['method']}_{r['arch']}_{budget_tag(r['budget'])}_seed{r['seed']}"


def run_dir(out: Path, r: dict, stage: str = "finetune") -> Path:
    """The folder of planned run ``r`` in sweep folder ``out``: ``runs/`` or ``pretrain/`` + :func:`run_key`."""
    return Path(out) / ("pretrain" if stage == "pretrain" else "runs") / run_key(r, stage)


def pretrain_config(sw: SweepConfig, r: dict) -> RunConfig:
    """The config of the pretraining run fine-tuning run ``r`` starts from."""
    seed = r["seed"] if r.get("pretrain_seed") is None else r["pretrain_seed"]
    return run_config(sw, r["arch"], int(seed), (r["spec"], r["options"]), {"pretrain.method": r["init"]},
                      stage="pretrain")


def finetune_config(sw: SweepConfig, r: dict, out: Path, stage: str | None = None) -> RunConfig:
    """The config of fine-tuning run ``r`` (``stage="finetune"`` checks its checkpoint exists)."""
    init = "random"
    if r["kind"] == "finetune" and r["init"] != "none":
        init = str(run_dir(out, r, "pretrain") / "checkpoint.pt")
    run = {"finetune.init": init, "finetune.labels": r["budget"], "finetune.mode": r["mode"]}
    if r["kind"] == "baseline":
        run["finetune.augment"] = sw.baseline.augment
        if sw.baseline.steps:
            run.update({"finetune.steps": int(sw.baseline.steps), "finetune.epochs": None})
    return run_config(sw, r["arch"], r["seed"], (r["spec"], r["options"]), run, stage=stage)
