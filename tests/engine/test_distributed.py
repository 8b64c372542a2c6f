"""Two CPU processes (gloo) against one: gathered losses, global BatchNorm, BYOL's target, the pipeline.

One 2-process session (spawned once, about 15-25 s on 2 busy cores) runs every
multi-process check and writes what it saw to JSON; the tests read it. A second
test starts the real command line with ``--devices 2`` (Fabric's launcher).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two CPU processes need two cores")

TOL = 1e-5  # float32: the gathered loss and the one-process loss differ only in summation order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5))


def check_gathered_losses(rank: int, world: int) -> dict:
    """Loss and gradients of W processes with gathered embeddings vs one process over the whole batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sslseg.engine.distributed import convert_batchnorm
    from sslseg.pretrain.losses import global_contrastive, nt_xent

    g = torch.Generator().manual_seed(1)
    n_global = 8
    x1, x2 = torch.randn(n_global, 6, generator=g), torch.randn(n_global, 6, generator=g)
    partition = torch.arange(n_global) % 3
    mine = slice(rank * n_global // world, (rank + 1) * n_global // world)
    losses = {
        "nt_xent": lambda a, b, p, gd: nt_xent(a, b, 0.5, gather_distributed=gd),
        "GR": lambda a, b, p, gd: global_contrastive(a, b, p, "GR", 0.5, gather_distributed=gd),
        "GD-": lambda a, b, p, gd: global_contrastive(a, b, p, "GD-", 0.5, gather_distributed=gd),
        "GD": lambda a, b, p, gd: global_contrastive(a, b, p, "GD", 0.5, gather_distributed=gd),
    }
    out = {}
    for name, fn in losses.items():
        ref = _tiny_net()
        z1, z2 = ref(torch.cat([x1, x2])).chunk(2)
        ref_loss = fn(z1, z2, partition, False)
        ref_loss.backward()
        net = _tiny_net()
        convert_batchnorm(net, gpu=False)
        ddp = DDP(net)
        z1, z2 = ddp(torch.cat([x1[mine], x2[mine]])).chunk(2)
        loss = fn(z1, z2, partition[mine], True)
        loss.backward()
        diffs = [float((loss - ref_loss).detach().abs())]
        diffs += [float((p.grad - q.grad).abs().max()) for p, q in zip(net.parameters(), ref.parameters(), strict=True)]
        diffs += [float((a - b).abs().max()) for a, b in zip(net[1].running_mean, ref[1].running_mean, strict=True)]
        worst = torch.tensor(max(diffs))
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        # without the gather each rank sees its own negatives only: a different loss (the check can fail)
        local = fn(z1.detach(), z2.detach(), partition[mine], False)
        out[name] = {"max_abs_diff": float(worst), "loss": float(ref_loss.detach()),
                     "local_only_diff": float((local - ref_loss).detach().abs())}
    return out


def check_byol_target(rank: int, world: int, fabric) -> dict:
    """After a few DDP steps, BYOL's EMA target is the same on every rank."""
    import torch.distributed as dist

    from sslseg.engine.loop import LoopConfig, fit
    from sslseg.models.build import build_model
    from sslseg.pretrain.build import build_method
    from sslseg.pretrain.ddp import prepare_for_ddp

    torch.manual_seed(0)
    method = build_method("byol", build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2))
    find_unused = prepare_for_ddp(method)
    before = torch.cat([p.detach().double().flatten() for p in method.target_encoder.parameters()])
    g = torch.Generator().manual_seed(100 + rank)  # every rank its own images
    fit(method, lambda s: torch.randn(4, 1, 32, 32, generator=g),
        LoopConfig(steps=3, weight_decay=0.0, lr=1e-2, log_every=1, sync_batchnorm=True, find_unused_parameters=find_unused),
        after_step=method.after_step, fabric=fabric)
    state = [t.detach().double() for t in
             [*method.target_encoder.state_dict().values(), *method.target_projector.state_dict().values()]]
    flat = torch.cat([t.flatten() for t in state])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    after = torch.cat([p.detach().double().flatten() for p in method.target_encoder.parameters()])
    return {"target_max_rank_diff": float(max((e - every[0]).abs().max() for e in every)),
            "target_moved": float((after - before).abs().max())}


class _Noisy(nn.Module):
    """A task whose augmentation draws from torch's global stream, as the pretraining methods' do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        x = x + 0.5 * torch.randn_like(x)
        return {"loss": (self.lin(x) ** 2).mean()}


def check_resume(rank: int, world: int, fabric, root: Path) -> dict:
    """A 2-process run stopped after its step-2 snapshot and resumed ends bitwise equal to one never stopped."""
    import torch.distributed as dist

    from sslseg.engine.loop import LoopConfig, fit

    cfg = LoopConfig(steps=6, weight_decay=0.0, lr=0.05, log_every=1, save_every=2)

    def run(out: Path, stop: int | None = None):
        torch.manual_seed(0)  # as every rank's command does before its first step
        task = _Noisy()

        def next_batch(step: int):
            if step == stop:
                raise KeyboardInterrupt  # every rank, before the step's first collective
            return torch.randn(4, 4, generator=torch.Generator().manual_seed(100 * step + rank))

        try:
            fit(task, next_batch, cfg, out_dir=out, fabric=fabric)
        except KeyboardInterrupt:
            return None
        return torch.cat([p.detach().flatten() for p in task.parameters()])

    ref = run(root / "resume_ref")
    assert run(root / "resume_run", stop=3) is None
    resumed = run(root / "resume_run")
    worst = (resumed - ref).abs().max().reshape(1)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    # the ranks' augmentations differ (their streams are their own): the noise drawn right after a step's seeding
    from sslseg.engine.loop import RankStreams

    streams = RankStreams(fabric)
    streams.seed(0)
    noise = torch.randn(3)
    every = [torch.empty_like(noise) for _ in range(world)]
    dist.all_gather(every, noise)
    return {"resume_max_diff": float(worst), "rank_noise_diff": float((every[0] - every[1]).abs().max())}


def check_batchnorm_by_default(rank: int, world: int, fabric) -> dict:
    """The loop's default on several processes (fine-tuning's): BatchNorm statistics over the global batch."""
    import torch.distributed as dist

    from sslseg.engine.loop import LoopConfig, fit

    net = _tiny_net()

    class Task(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"loss": self.net(x).pow(2).mean()}

    def next_batch(step: int):  # each rank its own data, shifted apart
        return torch.randn(4, 6, generator=torch.Generator().manual_seed(10 * step + rank)) + 3 * rank

    fit(Task(), next_batch, LoopConfig(steps=2, weight_decay=0.0, lr=0.01, log_every=1), fabric=fabric)
    stats = torch.cat([net[1].running_mean, net[1].running_var])
    every = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(every, stats)
    return {"bn_rank_diff": float((every[0] - every[1]).abs().max())}


def check_rank_zero_failures(rank: int, world: int, fabric) -> dict:
    """Rank 0 raising in rank-0-first work or in validation stops every rank at once, with its error."""
    import time

    from sslseg.engine.distributed import barrier, rank_zero_first
    from sslseg.engine.loop import LoopConfig, fit
    from sslseg.errors import UserError

    out = {}
    t = time.perf_counter()
    try:
        with rank_zero_first():
            if rank == 0:
                raise UserError("the data folder holds no images")
        out["first"] = "no error"
    except Exception as err:  # noqa: BLE001
        out["first"] = f"{type(err).__name__}: {err}"
    out["first_seconds"] = time.perf_counter() - t

    def validate(_task):
        raise RuntimeError("validation broke")

    t = time.perf_counter()
    try:
        fit(_Noisy(), lambda s: torch.randn(4, 4), LoopConfig(steps=3, lr=0.01, weight_decay=0.0, log_every=1, val_every=1), validate=validate,
            fabric=fabric)
        out["validate"] = "no error"
    except Exception as err:  # noqa: BLE001
        out["validate"] = f"{type(err).__name__}: {err}"
    out["validate_seconds"] = time.perf_counter() - t
    barrier()  # the process group still works
    return out


def run_pipeline(rank: int, root: Path) -> None:
    """Pretraining (simclr, byol, global_local) and fine-tuning from a pretrained checkpoint, 2 processes."""
    from sslseg.experiments.config import RunConfig, apply_set
    from sslseg.experiments.pipeline import run_finetune, run_pretrain

    tiny = ["data.image_size=32", "model.options.base_channels=4", "model.options.depth=2",
            "data.options.num_cases=8", "data.options.num_frames=6", "devices=2"]
    for method in ("simclr", "byol", "global_local"):
        cfg = apply_set(RunConfig(), [*tiny, f"pretrain.method={method}", "pretrain.steps=4",
                                      "pretrain.batch_size=8", "pretrain.warmup_steps=0"])
        run_pretrain(cfg, root / method)
    cfg = apply_set(RunConfig(), [*tiny, f"finetune.init={root / 'simclr' / 'checkpoint.pt'}", "finetune.labels=2",
                                  "finetune.steps=6", "finetune.batch_size=4", "finetune.freeze_encoder_steps=3",
                                  "finetune.val_every=3"])
    run_finetune(cfg, root / "finetune")
    # a semi-supervised mode in the same processes (the real launcher runs BCP below)
    cfg = apply_set(RunConfig(), [*tiny, f"finetune.init={root / 'simclr' / 'checkpoint.pt'}", "finetune.labels=2",
                                  "finetune.steps=4", "finetune.batch_size=4", "finetune.mode=unimatch"])
    run_finetune(cfg, root / "unimatch")


def _session(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "NODE_RANK": "0", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    root_p = Path(root)
    try:
        from sslseg.engine.distributed import start

        fabric = start(devices=world)
        report = {"gathered": check_gathered_losses(rank, world), "byol": check_byol_target(rank, world, fabric),
                  "resume": check_resume(rank, world, fabric, root_p),
                  "batchnorm": check_batchnorm_by_default(rank, world, fabric)}
        run_pipeline(rank, root_p)
        if rank == 0:
            (root_p / "report.json").write_text(json.dumps(report))
        # last: on a regression these would wait for the process group's timeout
        failures = check_rank_zero_failures(rank, world, fabric)
        (root_p / f"failures_rank{rank}.json").write_text(json.dumps(failures))
    except BaseException:
        (root_p / f"error_rank{rank}.txt").write_text(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def two_process_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_session, args=(r, 2, port, str(root))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    errors = [f.read_text() for f in sorted(root.glob("error_rank*.txt"))]
    assert not errors, errors[0]
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return root, json.loads((root / "report.json").read_text())


@needs_two_cores
def test_gathered_loss_and_gradients_equal_one_process(two_process_session):
    _, report = two_process_session
    for name, r in report["gathered"].items():
        assert r["max_abs_diff"] < TOL, (name, r)
        assert r["local_only_diff"] > 1e-3, (name, r)  # the gather matters


@needs_two_cores
def test_two_process_resume_is_bitwise_exact(two_process_session):
    """Every rank's stream is a pure function of (seed, rank, step): old code re-seeded ranks > 0 on resume."""
    _, report = two_process_session
    assert report["resume"]["resume_max_diff"] == 0.0, report["resume"]
    assert report["resume"]["rank_noise_diff"] > 0.1  # and the ranks draw different augmentations


@needs_two_cores
def test_batchnorm_statistics_are_global_by_default(two_process_session):
    """Fine-tuning's loop settings on 2 processes: the same BatchNorm statistics on both (old: per device)."""
    _, report = two_process_session
    assert report["batchnorm"]["bn_rank_diff"] < 1e-6, report["batchnorm"]


@needs_two_cores
def test_a_failure_on_rank_zero_stops_every_rank_at_once(two_process_session):
    """Old code: rank 1 waited in a collective for rank 0 until the process group's timeout (30 minutes)."""
    root, _ = two_process_session
    ranks = [json.loads((root / f"failures_rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["first"] == "UserError: the data folder holds no images", r  # a user error stays one
        assert r["first_seconds"] < 30 and r["validate_seconds"] < 60, r
    assert ranks[0]["validate"] == "RuntimeError: validation broke"
    assert ranks[1]["validate"] == ("RankZeroFailed: process 0 stopped with RuntimeError: validation broke; "
                                    "this process stops too")


@needs_two_cores
def test_byol_target_identical_on_every_rank(two_process_session):
    _, report = two_process_session
    assert report["byol"]["target_max_rank_diff"] == 0.0
    assert report["byol"]["target_moved"] > 0.0


def _log_lines(path: Path) -> list[str]:
    return [line.split(" INFO ", 1)[-1] for line in path.read_text().splitlines()]


@needs_two_cores
@pytest.mark.parametrize("run", ["simclr", "byol", "global_local", "finetune"])
def test_pipeline_on_two_processes(two_process_session, run):
    root, _ = two_process_session
    out = root / run
    names = {p.name for p in out.iterdir()}
    expected = {"checkpoint.pt", "config.yaml", "metrics.csv", "log.txt", "splits.json", "provenance.json"}
    if run == "finetune":
        expected |= {"labelled.json", "transfer.json"}
    assert names == expected
    lines = _log_lines(out / "log.txt")
    assert len(lines) == len(set(lines)), "a log line written twice"
    ranks = [ln for ln in lines if "first batch per rank" in ln]
    assert len(ranks) == 1
    sums = re.findall(r"rank \d: (\d+) samples, sum (\S+?)(?:,|$)", ranks[0])
    assert len(sums) == 2 and sums[0][1] != sums[1][1], ranks[0]  # the ranks drew different samples
    assert sum(int(n) for n, _ in sums) == (4 if run == "finetune" else 8)  # together: the global batch
    steps = [ln for ln in lines if re.search(r" step \d+ loss ", ln)]
    assert len(steps) == (6 if run == "finetune" else 4)
    if run == "finetune":
        assert sum("validation" in ln for ln in lines) == 2  # steps 3 and 6, once each
        # fine-tuning's BatchNorm normalises over the global batch too (old: per device)
        assert any("BatchNorm layers normalise over the global batch of 2 processes" in ln for ln in lines)


@needs_two_cores
def test_semi_supervised_mode_on_two_processes(two_process_session):
    """UniMatch on 2 processes: the labelled and the unlabelled batch each split between the ranks."""
    root, _ = two_process_session
    lines = _log_lines(root / "unimatch" / "log.txt")
    assert len(lines) == len(set(lines))
    assert any("2 processes; first batch per rank" in ln for ln in lines)
    resolved = json.loads((root / "unimatch" / "provenance.json").read_text())["resolved"]["finetune"]
    assert resolved["mode"] == "unimatch" and resolved["unlabelled_frames"] > 0
    assert len([ln for ln in lines if re.search(r" step \d+ loss ", ln)]) == 4


@needs_two_cores
@pytest.mark.parametrize("mode", ["bcp"])
def test_cli_finetune_two_devices(two_process_session, tmp_path, mode):
    """The real launcher: ``python -m sslseg.cli finetune --devices 2`` from a pretrained checkpoint, with a
    semi-supervised mode (the unlabelled batch split between the ranks; BCP's teacher on each; UniMatch runs
    on 2 processes in the shared session above)."""
    root, _ = two_process_session
    out = tmp_path / "ft"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "-m", "sslseg.cli", "finetune", "--data", "synthetic-echo", "--init",
         str(root / "simclr" / "checkpoint.pt"), "--labels", "2", "--out", str(out), "--steps", "4",
         "--batch-size", "4", "--devices", "2", "--image-size", "32", "--set", "model.options.base_channels=4",
         "--set", "model.options.depth=2", "--set", "data.options.num_cases=8", "--set", "data.options.num_frames=6",
         "--mode", mode],
        capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("fine-tuned checkpoint:") == 1, r.stdout  # printed by rank 0 only
    assert "encoder frozen for the first" in r.stdout
    lines = _log_lines(out / "log.txt")
    assert len(lines) == len(set(lines))
    assert any("2 processes; first batch per rank" in ln for ln in lines)
    resolved = json.loads((out / "provenance.json").read_text())["resolved"]["finetune"]
    assert resolved["mode"] == mode and resolved["unlabelled_frames"] > 0


@needs_two_cores
def test_cli_pretrain_two_devices(tmp_path):
    """The real launcher for pretraining: global_local, whose two stages train different parts."""
    out = tmp_path / "gl"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "-m", "sslseg.cli", "pretrain", "--data", "synthetic-echo", "--method", "global_local",
         "--out", str(out), "--steps", "4", "--batch-size", "8", "--devices", "2", "--image-size", "32",
         "--set", "model.options.base_channels=4", "--set", "model.options.depth=2",
         "--set", "data.options.num_cases=8", "--set", "data.options.num_frames=6"],
        capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("pretrained checkpoint:") == 1, r.stdout  # printed by rank 0 only
    # one set of outputs, rank 0's (the folder's lock file aside)
    assert {p.name for p in out.iterdir()} - {".lock"} == {"checkpoint.pt", "config.yaml", "metrics.csv", "log.txt",
                                                          "splits.json", "provenance.json"}
    lines = _log_lines(out / "log.txt")
    assert len(lines) == len(set(lines))
    ranks = [ln for ln in lines if "2 processes; first batch per rank" in ln]
    assert len(ranks) == 1
    sums = re.findall(r"rank \d: (\d+) samples, sum (\S+?)(?:,|$)", ranks[0])
    assert len(sums) == 2 and sums[0][1] != sums[1][1], ranks[0]  # the ranks drew different samples


def test_devices_beyond_the_machine_refused_before_launch(tmp_path, capsys):
    from sslseg.cli import main

    too_many = (os.cpu_count() or 1) + 1
    rc = main(["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--out", str(tmp_path / "x"),
               "--devices", str(too_many)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"--devices {too_many}" in err[0] and "core" in err[0]
    assert not (tmp_path / "x").exists()  # nothing started, nothing written


@pytest.mark.parametrize("argv,needle", [
    (["--precision", "16-mixed"], "16-mixed needs a GPU"),
    (["--devices", "0"], "devices = 0 is not allowed"),
    (["--devices", "2", "--batch-size", "5"], "must be a multiple of the 2 processes"),
])
def test_bad_device_requests_are_one_line(argv, needle, tmp_path, capsys):
    if torch.cuda.is_available() and "16-mixed" in argv:
        pytest.skip("a GPU can run 16-mixed")
    from sslseg.cli import main

    rc = main(["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
