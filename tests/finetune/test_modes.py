"""Semi-supervised fine-tuning modes: the loss pieces against MONAI and geometry, the unlabelled pool,
the pseudo-label rules, the teacher, a loss that goes down, and the pipeline's choices."""

import math

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from sslseg.data.batches import Normalizer, unlabelled_pool
from sslseg.data.splits import apply_splits, assign_splits
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import run_finetune
from sslseg.finetune import modes as modes_module
from sslseg.finetune import semi
from sslseg.finetune.bcp import BCP
from sslseg.finetune.losses import segmentation_loss
from sslseg.finetune.modes import (
    AUTO_MAX_CASES,
    AUTO_MODE,
    MODES,
    build_task,
    check_mode,
    resolve_mode,
)
from sslseg.finetune.unimatch import UniMatch
from sslseg.models.build import build_model

UNET = {"base_channels": 4, "depth": 2}


def test_masked_dice_ce_equals_monai_with_every_pixel():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 8, 8)
    target = torch.randint(0, 3, (3, 8, 8))
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target[:, None])
    assert torch.allclose(semi.masked_dice_ce(logits, target), ref, atol=1e-6)
    assert torch.allclose(semi.masked_dice_ce(logits, target, torch.ones(3, 8, 8)), ref, atol=1e-6)


def test_masked_dice_ce_ignores_what_the_weight_leaves_out():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    w = torch.zeros(2, 8, 8)
    w[:, :4] = 1
    other = logits.clone()
    other[:, :, 4:] = torch.randn(2, 2, 4, 8) * 5  # change only what the weight ignores
    for over in ("all", "weight"):
        a = semi.masked_dice_ce(logits, target, w, over)
        assert torch.allclose(a, semi.masked_dice_ce(other, target, w, over))
    # CE over the weight = CE of the kept pixels alone; over all pixels it is that times the kept share
    kept = torch.nn.functional.cross_entropy(logits[:, :, :4], target[:, :4])
    dice_part = semi.masked_dice_ce(logits, target, w, "all") - kept / 2
    assert torch.allclose(semi.masked_dice_ce(logits, target, w, "weight") - kept, dice_part, atol=1e-6)
    # nothing kept: no loss and no gradient
    z = logits.clone().requires_grad_(True)
    loss = semi.masked_dice_ce(z, target, torch.zeros(2, 8, 8))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(z.grad.abs().sum()) == 0.0


def test_cutmix_boxes_follow_unimatch_geometry():
    torch.manual_seed(0)
    boxes = semi.cutmix_boxes(4000, 40, 50, p=0.5)
    on = boxes.flatten(1).any(1)
    assert abs(on.float().mean().item() - 0.5) < 0.03
    area = boxes[on].flatten(1).float().mean(1)
    assert area.min() >= 0.015 and area.max() <= 0.41  # 2-40% of the image, floors aside
    for b in boxes[on][:50]:  # each one rectangle: its bounding box is full
        ys, xs = torch.nonzero(b, as_tuple=True)
        assert b[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert not semi.cutmix_boxes(10, 8, 8, p=0.0).any()


def test_paste_masks_zero_a_two_thirds_patch():
    torch.manual_seed(0)
    m = semi.paste_masks(50, 30, 60)
    inside = m == 0
    assert torch.all(inside.sum((1, 2)) == 20 * 40)
    for b in inside[:10]:
        ys, xs = torch.nonzero(b, as_tuple=True)
        assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (20, 40)


def test_unlabelled_pool_is_the_training_frames_but_the_selected_labelled_ones(tiny_cases):
    apply_splits(tiny_cases, assign_splits(tiny_cases, 0.2, 0.2, 0))
    train = [c for c in tiny_cases if c.split == "train"]
    chosen = [train[0].case_id]
    pool = unlabelled_pool(train, chosen, 32, Normalizer(0.0, 1.0))
    assert len(pool) == sum(c.num_frames for c in train) - len(train[0].labelled_indices)
    flat = pool.indices(5000, np.random.default_rng(0))
    first = set(int(i) for i in flat if i < train[0].num_frames)
    assert first and not first & set(train[0].labelled_indices)  # its unlabelled frames only
    assert len(set(flat.tolist())) == len(pool)  # every allowed frame is drawn
    with pytest.raises(ValueError, match="training cases only"):
        unlabelled_pool(tiny_cases, chosen, 32, Normalizer(0.0, 1.0))


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are given: class 1 where the image is positive, with a set confidence."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, perturb=None):
        if perturb is not None:
            x = perturb([x])[0]
        fg = (x[:, :1] > 0).float() * 2 - 1
        return torch.cat([-fg, fg], 1) * self.margin * self.w / 2


def test_unimatch_keeps_only_confident_pseudo_labels():
    x = torch.randn(2, 1, 16, 16)
    y = (x[:, 0] > 0).long()
    u = torch.randn(3, 1, 16, 16)
    batch = {"images": x, "masks": y, "unlabelled": u}
    loss = segmentation_loss("dice_ce")
    # softmax confidence of a margin m is sigmoid(m): 0.88 for 2, 0.9975 for 6
    sure = UniMatch(_Fixed(6.0), loss, None, threshold=0.95)(batch)
    unsure = UniMatch(_Fixed(2.0), loss, None, threshold=0.95)(batch)
    assert float(sure["confident"]) == 1.0 and float(unsure["confident"]) == 0.0
    assert float(unsure["loss_fp"]) == 0.0 and float(unsure["loss_strong"]) == 0.0
    assert float(sure["loss_fp"]) > 0.0


def _batch(n=4, m=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    return {"images": x, "masks": (x[:, 0] > 0).long(), "unlabelled": torch.randn(m, 1, size, size, generator=g)}


def test_bcp_teacher_copies_the_student_after_warmup_then_follows_by_ema():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, **UNET)
    task = BCP(model, None, None, steps=10, warmup_fraction=0.3, ema_decay=0.9)
    assert task.warmup_steps == 3
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    task.after_step(0, 10)  # inside the warm-up: the teacher does not move
    t0 = [p.clone() for p in task.teacher.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(t0, model.parameters(), strict=True))
    task.after_step(2, 10)  # the warm-up ends: the teacher becomes the student
    assert all(torch.equal(a, b) for a, b in zip(task.teacher.parameters(), model.parameters(), strict=True))
    before = [p.clone() for p in task.teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    task.after_step(3, 10)
    for t, b, s in zip(task.teacher.parameters(), before, model.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    assert not any(p.requires_grad for p in task.teacher.parameters())
    # warm-up batches never call the teacher; self-training ones do
    calls = []
    task.teacher.register_forward_hook(lambda *a: calls.append(1))
    task(dict(_batch(), step=0))
    assert not calls
    task(dict(_batch(), step=5))
    assert calls


@pytest.mark.parametrize("mode", ["unimatch", "bcp"])
def test_mode_trains_the_model(mode):
    """40 steps (half warm-up, half with pseudo-labels): the supervised loss of the trained network on
    its labelled frames, in eval mode, goes down."""
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, **UNET)
    loss = segmentation_loss("dice_ce")
    task = build_task(mode, model, loss, None, steps=40)
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    probe = _batch(seed=0)

    def supervised_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = float(loss(model(probe["images"]), probe["masks"]))
        model.train()
        return value

    before = supervised_loss()
    for step in range(40):
        out = task(dict(_batch(seed=step % 4), step=step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.after_step(step, 40) if hasattr(task, "after_step") else None
    assert supervised_loss() < 0.8 * before


def test_mode_names_and_options_are_checked(monkeypatch):
    assert {"supervised", "unimatch", "bcp"} <= set(MODES)
    check_mode("auto")
    check_mode("unimatch", {"threshold": 0.9})
    with pytest.raises(ValueError, match="unknown fine-tuning mode 'fixmatch'; choose one of auto"):
        check_mode("fixmatch")
    with pytest.raises(ValueError, match="unimatch has no option 'thresh'; its options: warmup_fraction, threshold"):
        check_mode("unimatch", {"thresh": 0.9})
    with pytest.raises(ValueError, match=r"threshold = 1.5 is not allowed: expected a number >= 0.0 and <= 1.0"):
        check_mode("unimatch", {"threshold": 1.5})
    with pytest.raises(ValueError, match="ema_decay = 'abc'"):
        check_mode("bcp", {"ema_decay": "abc"})
    # auto: the measured best mode with few labelled cases beside unlabelled frames, else supervised
    assert resolve_mode("auto", 10, 1) == AUTO_MODE
    assert resolve_mode("auto", 0, 1) == "supervised" and resolve_mode("auto", 10, AUTO_MAX_CASES + 1) == "supervised"
    monkeypatch.setattr(modes_module, "AUTO_MODE", "bcp")
    assert resolve_mode("auto", 10, 1) == "bcp" and resolve_mode("auto", 0, 1) == "supervised"
    with pytest.raises(ValueError, match="needs unlabelled frames"):
        resolve_mode("bcp", 0)


@pytest.mark.parametrize("mode", ["unimatch", "bcp"])
def test_finetune_draws_unlabelled_frames_from_the_training_split_only(tiny_cases, tmp_path, monkeypatch, mode):
    """Every unlabelled frame a run sees is a training frame outside the labelled ones; val/test never."""
    apply_splits(tiny_cases, assign_splits(tiny_cases, 0.2, 0.2, 0))
    for c in tiny_cases:  # each frame's pixels name its case and index
        c.frames = np.stack([np.full(c.frames.shape[1:], 10 * int(c.case_id[-2:]) + i, np.uint8)
                             for i in range(c.num_frames)])
    seen = []
    cls = MODES.get(mode)
    original = cls.forward

    def spy(self, batch):
        seen.append(batch["unlabelled"][:, 0, 0, 0].clone())
        return original(self, batch)

    monkeypatch.setattr(cls, "forward", spy)
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = dict(UNET)
    cfg.finetune.labels, cfg.finetune.steps, cfg.finetune.batch_size = "2", 6, 4
    cfg.finetune.val_every, cfg.finetune.augment, cfg.finetune.mode = 0, 0.0, mode
    from sslseg.data.batches import Normalizer as N

    norm = N.fit([c for c in tiny_cases if c.split == "train"], seed=cfg.seed)
    run_finetune(cfg, tmp_path / "ft", tiny_cases)
    values = torch.cat(seen) * norm.std * norm.scale + norm.mean * norm.scale  # undo the normalisation
    import json

    labelled = set(json.loads((tmp_path / "ft" / "labelled.json").read_text())["case_ids"])
    allowed = {10 * int(c.case_id[-2:]) + i for c in tiny_cases if c.split == "train" for i in range(c.num_frames)
               if not (c.case_id in labelled and i in c.labelled_indices)}
    got = {int(round(float(v))) for v in values}
    assert got and got <= allowed, sorted(got - allowed)
    assert len(seen) == 6 and all(len(s) == 4 for s in seen)
    assert not math.isnan(float(values.sum()))


def test_cli_mode_is_recorded_and_auto_resolves(tmp_path, capsys):
    """--mode lands in config.yaml, provenance and the checkpoint; auto records the mode it ran, and the same
    command asked again finds the finished run."""
    import json

    import yaml

    from sslseg.cli import main
    from sslseg.engine.checkpoint import load_checkpoint
    tiny = ["finetune", "--data", "synthetic-echo", "--image-size", "32", "--batch-size", "2", "--steps", "2",
            "--set", "model.options.base_channels=4", "--set", "model.options.depth=2", "--labels", "1",
            "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4", "--set", "data.options.size=32"]
    for given, ran in (("bcp", "bcp"), (None, AUTO_MODE), ("unimatch", "unimatch")):
        out = tmp_path / str(given)
        argv = [*tiny, "--out", str(out)] + (["--mode", given] if given else [])
        assert main(argv) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["finetune"]["mode"] == ran
        assert load_checkpoint(out / "checkpoint.pt")["mode"] == ran
        prov = json.loads((out / "provenance.json").read_text())["resolved"]["finetune"]
        assert prov["mode"] == ran and (prov["unlabelled_frames"] > 0) == (ran != "supervised")
        printed = capsys.readouterr().out
        assert "best validation Dice" in printed and "(the weights saved)" in printed
        assert ("mode: " + ran in printed) == (ran != "supervised")
        assert main(argv) == 0
        assert "already finished" in capsys.readouterr().out
    assert main(["modes"]) == 0
    assert "bcp" in capsys.readouterr().out
