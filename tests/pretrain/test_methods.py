import copy

import numpy as np
import pytest
import torch

from sslseg.data.sample import Case
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import load_cases, run_finetune, run_pretrain
from sslseg.models.build import build_model
from sslseg.pretrain.build import METHODS, build_method
from sslseg.pretrain.ema import cosine_momentum


def _batch(method, x):
    if method.partitions:
        return {"images": x, "partition": torch.arange(x.shape[0]) % 4}
    return x


def _images(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, size, size, generator=g) * 0.3
    for i in range(n):  # distinguishable images: a bright square at a different place each
        x[i, :, 4 + i : 14 + i, 6 + 2 * (i % 4) : 16 + 2 * (i % 4)] += 2.0
    return x


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_finite_and_decreasing_over_20_steps(name):
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=3)
    kwargs = {"global_fraction": 0.5} if name == "global_local" else {}
    method = build_method(name, model, **kwargs)
    x = _images()
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(20):
        torch.manual_seed(1)  # the same augmentations every step: the loss itself must go down
        loss = method(_batch(method, x))["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if name != "global_local":  # global_local would change stage half-way; its loss is another one then
            method.after_step(step, 20)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_byol_target_gets_no_gradient_and_follows_by_ema():
    torch.manual_seed(0)
    method = build_method("byol", build_model("unet", base_channels=4, depth=2), momentum=0.9)
    before = {k: v.clone() for k, v in method.target_encoder.named_parameters()}
    method(_images(4, 16))["loss"].backward()
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    # weights untouched (BatchNorm running statistics are copied from the online network by the EMA step)
    assert all(torch.equal(v, before[k]) for k, v in method.target_encoder.named_parameters())
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    online = [p.clone() for p in method.encoder.parameters()]
    target = [p.clone() for p in method.target_encoder.parameters()]
    method.after_step(0, 10)  # tau = 0.9 at step 0
    for po, pt0, pt in zip(online, target, method.target_encoder.parameters(), strict=True):
        assert torch.allclose(pt, 0.9 * pt0 + 0.1 * po, atol=1e-6)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)


def test_global_local_switches_stage_and_freezes_encoder():
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=3)
    method = build_method("global_local", model, global_fraction=0.5)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-2)
    x = {"images": _images(8, 32), "partition": torch.arange(8) % 4}
    stages = []
    for step in range(4):
        stages.append(method.stage)
        enc_before = copy.deepcopy(model.encoder.state_dict())
        dec_before = copy.deepcopy(model.decoder.state_dict())
        opt.zero_grad(set_to_none=True)
        method(x)["loss"].backward()
        opt.step()
        enc_same = all(torch.equal(v, enc_before[k]) for k, v in model.encoder.state_dict().items())
        dec_same = all(torch.equal(v, dec_before[k]) for k, v in model.decoder.state_dict().items())
        if method.stage == "global":
            assert not enc_same and dec_same  # only the encoder learns in the global stage
        else:
            assert enc_same and not dec_same  # encoder (weights and BN statistics) frozen in the local stage
        method.after_step(step, 4)
    assert stages == ["global", "global", "local", "local"]
    assert "in_local_stage" in method.state_dict()  # the stage survives a resume


@pytest.mark.parametrize("name", sorted(METHODS))
def test_pipeline_pretrains_and_each_checkpoint_finetunes(name, tmp_path, tiny_cases):
    from sslseg.data import registry

    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 3}
    cfg.pretrain.method = name
    cfg.pretrain.steps = 3
    cfg.pretrain.batch_size = 8
    cfg.pretrain.warmup_steps = 0
    cfg.finetune.steps = 2
    cfg.finetune.batch_size = 2
    cfg.finetune.labels = "1"
    registry.DATASETS.add("tiny-discs", lambda: [copy.deepcopy(c) for c in tiny_cases], "test", needs_path=False)
    try:
        cfg.data.spec = "tiny-discs"
        cases = load_cases(cfg, tmp_path)
        ckpt = run_pretrain(cfg, tmp_path / "pre", cases)
        saved = torch.load(ckpt, weights_only=True)
        assert saved["method"] == name and saved["trained_parts"]
        cfg.finetune.init = str(ckpt)
        ft = run_finetune(cfg, tmp_path / "ft", cases)
        assert "tensors loaded" in torch.load(ft, weights_only=True)["transfer"]
    finally:
        registry.DATASETS.remove("tiny-discs")


def test_cines_default_to_gr_and_volumes_keep_the_paper_default():
    from sslseg.pretrain.build import frame_axis, resolve_options

    frames = np.zeros((2, 4, 4), np.uint8)
    cine = [Case("c", frames)] * 2
    vol = [Case("v", frames, volume=True)] * 2
    assert frame_axis(cine) == "time" and frame_axis(vol) == "slice" and frame_axis(cine + vol) is None
    for name in ("global_contrastive", "global_local"):
        opts, why = resolve_options(name, {}, "time")
        assert opts == {"strategy": "GR"} and "GR" in why
        assert resolve_options(name, {}, "slice") == ({}, None)  # GD, as in the paper
        assert resolve_options(name, {}, None) == ({}, None)
        assert resolve_options(name, {"strategy": "GD-"}, "time") == ({"strategy": "GD-"}, None)  # asked for
    assert resolve_options("regression_contrastive", {}, "time") == ({"strategy": "GR"}, None)  # its default already
    assert resolve_options("simclr", {"temperature": 0.2}, "time") == ({"temperature": 0.2}, None)
    with pytest.raises(ValueError, match="unknown pretraining method"):
        resolve_options("simclrr", {}, "time")


def test_pretraining_on_cines_records_the_strategy_it_ran(tmp_path, tiny_cases):
    import yaml

    from sslseg.data.splits import apply_splits, assign_splits

    for c in tiny_cases:
        c.volume = False
    apply_splits(tiny_cases, assign_splits(tiny_cases, 0.2, 0.2, 0))
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 3}
    cfg.pretrain.method = "global_contrastive"
    cfg.pretrain.steps = 1
    cfg.pretrain.batch_size = 8
    ckpt = run_pretrain(cfg, tmp_path / "pre", tiny_cases)
    assert yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())["pretrain"]["options"] == {"strategy": "GR"}
    assert torch.load(ckpt, weights_only=True)["config"]["pretrain"]["options"] == {"strategy": "GR"}
    assert cfg.pretrain.options == {}  # the caller's config is left alone


@pytest.mark.parametrize("name", ["regression", "regression_contrastive"])
def test_mask_patch_option_reaches_the_regression_loss(name):
    from sslseg.augment.masking import noise_mask
    from sslseg.pretrain.losses import masked_l1

    torch.manual_seed(0)
    method = build_method(name, build_model("unet", base_channels=4, depth=3), mask_patch=4).eval()
    regression = method if name == "regression" else method.regression
    x = _images()
    torch.manual_seed(5)
    got = regression(x)["loss"]
    torch.manual_seed(5)
    corrupted, mask = noise_mask(x, 0.25, 1.0, patch=4)
    assert torch.allclose(got, masked_l1(regression.reconstruct(corrupted), x, mask))
    torch.manual_seed(5)
    _, pixel_mask = noise_mask(x, 0.25, 1.0)
    assert not torch.equal(mask, pixel_mask)  # squares, not the default pixel mask


def _max_change(before: dict, module: torch.nn.Module) -> float:
    return max((p.detach() - before[k]).abs().max().item() for k, p in module.named_parameters())


@pytest.mark.parametrize("ratio", [1.0, 10.0])
def test_byol_predictor_lr_ratio_scales_the_predictor_step(ratio):
    # Adam's first step moves every parameter with a gradient by ~lr (m/sqrt(v) = sign(g)), so the
    # largest move of a predictor weight is ratio x the largest move of an encoder weight
    torch.manual_seed(0)
    method = build_method("byol", build_model("unet", base_channels=4, depth=2), predictor_lr_ratio=ratio)
    groups = method.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3 * ratio]
    assert not any(p is q for p in groups[0]["params"] for q in method.predictor.parameters())
    enc0 = {k: v.detach().clone() for k, v in method.encoder.named_parameters()}
    pred0 = {k: v.detach().clone() for k, v in method.predictor.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0)
    method(_images(4, 16))["loss"].backward()
    opt.step()
    assert _max_change(pred0, method.predictor) / _max_change(enc0, method.encoder) == pytest.approx(ratio, rel=0.02)
    with pytest.raises(ValueError, match="predictor_lr_ratio must be > 0"):
        build_method("byol", build_model("unet", base_channels=4, depth=2), predictor_lr_ratio=0)


def test_pretraining_gives_byol_its_predictor_lr(tmp_path, tiny_cases, monkeypatch):
    # through the pipeline, from the config's per-method options, as `sslseg pretrain` and a sweep run it
    from sslseg.data.splits import apply_splits, assign_splits
    from sslseg.experiments import pipeline

    apply_splits(tiny_cases, assign_splits(tiny_cases, 0.2, 0.2, 0))
    moved = {}
    real_fit = pipeline.fit

    def fit(method, *args, **kwargs):
        enc0 = {k: v.detach().clone() for k, v in method.encoder.named_parameters()}
        pred0 = {k: v.detach().clone() for k, v in method.predictor.named_parameters()}
        result = real_fit(method, *args, **kwargs)
        moved["ratio"] = _max_change(pred0, method.predictor) / _max_change(enc0, method.encoder)
        return result

    monkeypatch.setattr(pipeline, "fit", fit)
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 2}
    cfg.pretrain.method = "byol"
    cfg.pretrain.options = {"byol": {"predictor_lr_ratio": 10}}
    cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.warmup_steps, cfg.pretrain.weight_decay = 1, 8, 0, 0.0
    run_pretrain(cfg, tmp_path / "pre", tiny_cases)
    assert moved["ratio"] == pytest.approx(10.0, rel=0.02)
