"""Transfer reports, encoder freezing in the fine-tuning pipeline, and ``--init`` with a plain state_dict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sslseg.cli import main
from sslseg.data.splits import apply_splits, assign_splits
from sslseg.engine.checkpoint import load_checkpoint, save_checkpoint
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import run_finetune
from sslseg.finetune.transfer import TransferReport, strip_prefix, transfer_weights
from sslseg.models.build import build_model

UNET = {"base_channels": 4, "depth": 2}


def test_report_per_part_and_unexpected_keys():
    src = build_model("unet", num_classes=3, **UNET).state_dict()
    src["encoder.extra.weight"] = torch.zeros(1)
    src["projector.net.0.weight"] = torch.zeros(1)
    model = build_model("unet", num_classes=2, **UNET)
    report = transfer_weights(model, src, parts=("encoder", "decoder", "head"))
    n_enc = sum(k.startswith("encoder.") for k in model.state_dict())
    assert len(report.loaded["encoder"]) == n_enc
    # the head has 3 classes in the checkpoint and 2 here: shapes differ, left at initialisation
    assert report.missing == {"head": ["head.weight", "head.bias"]}
    assert report.unexpected == {"encoder": ["encoder.extra.weight"], "other": ["projector.net.0.weight"]}
    text = report.summary()
    assert f"encoder: {n_enc} tensors loaded, 0 left at initialisation, 1 in the checkpoint ignored" in text
    assert "head: 0 tensors loaded, 2 left at initialisation" in text


def test_nothing_matched_fails():
    src = build_model("unet", base_channels=8, depth=2).state_dict()
    with pytest.raises(ValueError, match="no pretrained weight matched"):
        transfer_weights(build_model("unet", **UNET), src)
    with pytest.raises(ValueError, match="unknown model part 'backbone'"):
        transfer_weights(build_model("unet", **UNET), src, parts=("backbone",))
    assert TransferReport().num_loaded == 0


def test_strip_prefix_only_when_every_key_has_it():
    assert strip_prefix({"module.module.a": 1, "module.module.b": 2}) == {"a": 1, "b": 2}
    assert strip_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def _finetune_cfg(init: str, steps: int, freeze: int) -> RunConfig:
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = dict(UNET)
    cfg.finetune.init = init
    cfg.finetune.labels = "2"
    cfg.finetune.steps = steps
    cfg.finetune.batch_size = 4
    cfg.finetune.val_every = 0
    cfg.finetune.augment = 0.0
    cfg.finetune.freeze_encoder_steps = freeze
    return cfg

def _pretrained(tmp_path, cases, parts=("encoder",)):
    """An untouched UNet saved as a pretraining checkpoint of ``parts``; the cases get a split."""
    pre = build_model("unet", **UNET)
    init = tmp_path / "pre.pt"
    save_checkpoint(init, pre, "unet", {"in_channels": 1, "num_classes": 2, **UNET}, stage="pretrain",
                    trained_parts=list(parts))
    apply_splits(cases, assign_splits(cases))
    return pre, init



@pytest.mark.parametrize("freeze,encoder_moves", [(3, False), (1, True)])
def test_finetune_freezes_the_encoder_for_the_first_steps(tmp_path, tiny_cases, freeze, encoder_moves):
    pre = build_model("unet", **UNET)
    with torch.no_grad():
        for t in pre.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t))
    init = tmp_path / "pre.pt"
    save_checkpoint(init, pre, "unet", {"in_channels": 1, "num_classes": 2, **UNET}, stage="pretrain",
                    trained_parts=["encoder"])
    apply_splits(tiny_cases, assign_splits(tiny_cases))
    out = run_finetune(_finetune_cfg(str(init), steps=3, freeze=freeze), tmp_path / "ft", tiny_cases)
    after = load_checkpoint(out)["state_dict"]
    enc = [k for k in after if k.startswith("encoder.")]
    # weights and BatchNorm running statistics alike
    same = [torch.equal(after[k], pre.state_dict()[k]) for k in enc]
    assert not all(same) if encoder_moves else all(same)
    assert not all(torch.equal(after[k], pre.state_dict()[k]) for k in after if k.startswith("decoder."))


@pytest.mark.parametrize("freeze_epochs,encoder_moves", [(2, False), (1, True)])
def test_finetune_freezes_the_encoder_for_the_first_epochs(tmp_path, tiny_cases, freeze_epochs, encoder_moves):
    pre, init = _pretrained(tmp_path, tiny_cases)
    cfg = _finetune_cfg(str(init), steps=0, freeze=0)
    cfg.finetune.epochs, cfg.finetune.freeze_encoder_epochs = 2, freeze_epochs
    out = run_finetune(cfg, tmp_path / "ft", tiny_cases)
    ck = load_checkpoint(out)
    after = ck["state_dict"]
    same = [torch.equal(after[k], pre.state_dict()[k]) for k in after if k.startswith("encoder.")]
    assert not all(same) if encoder_moves else all(same)
    # two epochs of the labelled frames, the first one or both frozen
    frames = sum(len(c.labelled_indices) for c in tiny_cases if c.case_id in ck["labelled_cases"])
    assert ck["freeze_encoder_steps"] == freeze_epochs * math.ceil(frames / 4)  # batch size 4
    report = json.loads((tmp_path / "ft" / "transfer.json").read_text())
    assert len(report["loaded"]["encoder"]) > 0 and report["loaded"].get("decoder", []) == []
    assert report["freeze_encoder_steps"] == ck["freeze_encoder_steps"]


def test_cli_finetune_deeplabv3_from_a_dataparallel_state_dict(tmp_path, capsys):
    """EchoNet-Dynamic's layout: {"state_dict": {"module.backbone...": ...}, "epoch": ...}, RGB, one class."""
    torch.manual_seed(0)
    tv = build_model("deeplabv3", in_channels=3, num_classes=1)
    init = tmp_path / "echonet_style.pt"
    torch.save({"epoch": 45, "state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, init)
    out = tmp_path / "ft"
    argv = ["finetune", "--data", "synthetic-echo", "--arch", "deeplabv3", "--init", str(init), "--labels", "1",
            "--out", str(out), "--steps", "1", "--batch-size", "2", "--image-size", "32",
            "--set", "data.options.num_cases=8", "--set", "data.options.num_frames=4",
            "--set", "finetune.val_every=0", "--set", "finetune.augment=0"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "weights: encoder: 318 tensors loaded" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["arch"] == "deeplabv3" and ckpt["model_kwargs"]["in_channels"] == 1
    assert ckpt["transfer"].startswith("encoder: 318 tensors loaded, 0 left at initialisation; "
                                       "decoder: 42 tensors loaded, 0 left at initialisation; "
                                       "head: 0 tensors loaded, 2 left at initialisation")
    assert "summed over input channels: backbone.conv1.weight" in ckpt["transfer"]


def test_recalibrate_batchnorm_is_the_plain_average_over_batches():
    from sslseg.finetune.transfer import recalibrate_batchnorm

    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.5))
    net[0].weight.data.fill_(2.0)
    net.eval()
    batches = [torch.randn(4, 3, 5, 5, generator=g) * (i + 1) + i for i in range(3)]
    assert recalibrate_batchnorm(net, batches) == 1
    x = torch.stack(batches)  # (3 batches, 4, 3, 5, 5)
    mean = x.mean(dim=(0, 1, 3, 4))
    var = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(net[0].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[0].running_var, var, atol=1e-4)
    assert net[0].momentum == 0.1 and not net.training and not net[0].training  # modes restored
    assert torch.equal(net[0].weight, torch.full((3,), 2.0))
    assert recalibrate_batchnorm(torch.nn.Conv2d(1, 1, 1), iter(())) == 0


def test_finetune_recalibrates_a_frozen_encoders_statistics(tmp_path, tiny_cases):
    pre, init = _pretrained(tmp_path, tiny_cases)
    cfg = _finetune_cfg(str(init), steps=2, freeze=2)
    cfg.finetune.recalibrate_bn = True
    after = load_checkpoint(run_finetune(cfg, tmp_path / "ft", tiny_cases))["state_dict"]
    before = pre.state_dict()
    enc = [k for k in after if k.startswith("encoder.")]
    stats = [k for k in enc if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in enc if k.endswith(("weight", "bias"))]
    assert stats and weights
    assert all(torch.equal(after[k], before[k]) for k in weights)  # frozen
    # fresh BatchNorm statistics are 0 / 1 and the encoder is frozen throughout, so any change is the re-estimate
    assert not any(torch.equal(after[k], before[k]) for k in stats)


def test_finetune_transfers_only_the_parts_asked_for(tmp_path, tiny_cases):
    pre, init = _pretrained(tmp_path, tiny_cases, ("encoder", "decoder"))
    cfg = _finetune_cfg(str(init), steps=1, freeze=0)
    run_finetune(cfg, tmp_path / "both", tiny_cases)
    both = json.loads((tmp_path / "both" / "transfer.json").read_text())
    assert both["loaded"]["encoder"] and both["loaded"]["decoder"]
    cfg.finetune.transfer_parts = ["encoder"]
    run_finetune(cfg, tmp_path / "enc", tiny_cases)
    enc = json.loads((tmp_path / "enc" / "transfer.json").read_text())
    assert enc["loaded"]["encoder"] == both["loaded"]["encoder"] and not enc["loaded"].get("decoder")
    assert sorted(enc["missing"]["decoder"]) == sorted(both["loaded"]["decoder"])
    cfg.finetune.transfer_parts = "encoder"  # one name, as --set gives it
    run_finetune(cfg, tmp_path / "enc1", tiny_cases)
    assert json.loads((tmp_path / "enc1" / "transfer.json").read_text())["loaded"] == enc["loaded"]
    cfg.finetune.transfer_parts = ["head"]
    with pytest.raises(ValueError, match="unknown part 'head'"):
        run_finetune(cfg, tmp_path / "bad", tiny_cases)
    save_checkpoint(init, pre, "unet", {"in_channels": 1, "num_classes": 2, **UNET}, stage="pretrain",
                    trained_parts=["encoder"])
    cfg.finetune.transfer_parts = ["decoder"]
    with pytest.raises(ValueError, match="pretrained only encoder"):
        run_finetune(cfg, tmp_path / "bad2", tiny_cases)


@pytest.mark.parametrize("labels, fraction", [("1", 0.5), ("2", 0.2)])
def test_automatic_freeze_follows_the_number_of_labelled_cases(tmp_path, tiny_cases, labels, fraction):
    _, init = _pretrained(tmp_path, tiny_cases)
    cfg = _finetune_cfg(str(init), steps=10, freeze=None)
    cfg.finetune.labels = labels
    ck = load_checkpoint(run_finetune(cfg, tmp_path / "ft", tiny_cases))
    assert len(ck["labelled_cases"]) == int(labels)
    assert ck["freeze_encoder_steps"] == round(fraction * 10)


def test_random_init_is_never_frozen_even_when_asked(tmp_path, tiny_cases):
    """Issue 25 item 1: an explicit freeze in a sweep's finetune section must not weaken the random-init baseline."""
    apply_splits(tiny_cases, assign_splits(tiny_cases))
    for key, value in (("freeze_encoder_steps", 3), ("freeze_encoder_epochs", 1)):
        cfg = _finetune_cfg("random", steps=3, freeze=0)
        cfg.finetune.mode = "supervised"
        setattr(cfg.finetune, key, value)
        out = run_finetune(cfg, tmp_path / key, tiny_cases)
        ck = load_checkpoint(out)
        assert ck["freeze_encoder_steps"] == 0


def test_validation_counts_false_positives_on_empty_frames():
    """Issue 25 item 2: foreground predicted on every empty frame is not a perfect validation score."""
    from sslseg.data.batches import LabelledSet, Normalizer
    from sslseg.data.sample import Case
    from sslseg.experiments.pipeline import _mean_dice

    class Constant(torch.nn.Module):
        def __init__(self, label: int) -> None:
            super().__init__()
            self.label = label
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            logits[:, self.label] = 1.0
            return logits + self.w

    frames = np.zeros((4, 16, 16), np.uint8)
    full, empty = np.ones((16, 16), np.int64), np.zeros((16, 16), np.int64)
    data = LabelledSet([Case("v", frames, {0: full, 1: empty, 2: empty, 3: full})], 16, Normalizer(0.0, 1.0))
    # foreground everywhere: Dice 1 on the two full frames, 0 on the two empty ones
    assert _mean_dice(Constant(1), data, 2) == pytest.approx(0.5)
    # background everywhere: 0 on the full frames; the empty ones have nothing to find
    assert _mean_dice(Constant(0), data, 2) == pytest.approx(0.0)
