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
        LoopConfig(steps=3, lr=1e-2, log_every=1, sync_batchnorm=True, find_unused_parameters=find_unused),
        after_step=method.after_step, fabric=fabric)
    state = [t.detach().double() for t in
             [*method.target_encoder.state_dict().values(), *method.target_projector.state_dict().values()]]
    flat = torch.cat([t.flatten() for t in state])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    after = torch.cat([p.detach().double().flatten() for p in method.target_encoder.parameters()])
    return {"target_max_rank_diff": float(max((e - every[0]).abs().max() for e in every)),
            "target_moved": float((after - before).abs().max())}


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


def _session(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "NODE_RANK": "0", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    root_p = Path(root)
    try:
        from sslseg.engine.distributed import start

        fabric = start(devices=world)
        report = {"gathered": check_gathered_losses(rank, world), "byol": check_byol_target(rank, world, fabric)}
        run_pipeline(rank, root_p)
        if rank == 0:
            (root_p / "report.json").write_text(json.dumps(report))
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


@needs_two_cores
@pytest.mark.parametrize("mode", ["unimatch", "bcp"])
def test_cli_finetune_two_devices(two_process_session, tmp_path, mode):
    """The real launcher: ``python -m sslseg.cli finetune --devices 2`` from a pretrained checkpoint, with each
    semi-supervised mode (the unlabelled batch split between the ranks; BCP's teacher on each)."""
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
