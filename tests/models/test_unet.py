import pytest
import torch

from sslseg.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sslseg.models.build import build_model


@pytest.mark.parametrize("in_ch,k", [(1, 2), (3, 4)])
@pytest.mark.parametrize("hw", [(32, 32), (37, 45)])
def test_forward_backward_shapes(in_ch, k, hw):
    m = build_model("unet", in_channels=in_ch, num_classes=k, base_channels=4, depth=3)
    x = torch.randn(2, in_ch, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == (2, k, *hw)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


def test_encoder_exposes_stages():
    m = build_model("unet", base_channels=4, depth=3)
    feats = m.encoder(torch.randn(1, 1, 32, 32))
    assert [f.shape[1] for f in feats] == m.encoder.out_channels == [4, 8, 16, 32]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norms(norm):
    m = build_model("unet", base_channels=8, depth=2, norm=norm)
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="choose one of .*unet"):
        build_model("vnet")


def test_checkpoint_round_trip_gives_identical_output(tmp_path):
    kw = {"in_channels": 1, "num_classes": 3, "base_channels": 4, "depth": 2}
    m = build_model("unet", **kw).eval()
    save_checkpoint(tmp_path / "m.pt", m, "unet", kw, {"a": 1})
    assert not list(tmp_path.glob("*.tmp"))
    m2 = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt")).eval()
    x = torch.randn(2, 1, 24, 24)
    assert torch.equal(m(x), m2(x))


def test_bad_checkpoints_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="sslseg/1"):
        load_checkpoint(tmp_path / "foreign.pt")


def _reference_unet_logits(m, x):
    """The UNet as first written: bilinear upsampling *then* the 1x1 conv, NCHW throughout."""
    feats, h = [], x
    for i, stage in enumerate(m.encoder.stages):
        h = stage(torch.nn.functional.max_pool2d(h, 2) if i else h).contiguous()
        feats.append(h)
    h = feats[-1]
    for up, block, skip in zip(m.decoder.ups, m.decoder.blocks, feats[-2::-1], strict=True):
        h = torch.nn.functional.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        h = block(torch.cat([up(h), skip], dim=1))
    return m.head(h)


def test_fast_decoder_computes_the_upsample_then_conv_unet():
    # conv-before-upsampling, the transposed-conv upsampling and channels_last change the cost, not the function
    torch.manual_seed(0)
    m = build_model("unet", num_classes=3, base_channels=4, depth=3).eval()
    x = torch.randn(2, 1, 48, 40)
    with torch.no_grad():
        assert torch.allclose(m(x), _reference_unet_logits(m, x), atol=1e-5, rtol=1e-5)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in m.encoder(x)[1:])


def test_upsample2x_matches_bilinear_interpolation_values_and_gradients():
    from sslseg.models.unet import upsample2x_bilinear

    for shape in [(2, 3, 1, 1), (2, 5, 7, 4)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        w = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], dtype=torch.float64)
        ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
        out = upsample2x_bilinear(x)
        (g,) = torch.autograd.grad((out * w).sum(), x)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(g, g_ref, atol=1e-12)


def test_nchw_state_dict_loads_into_the_channels_last_model():
    # checkpoints written before the weights were stored NHWC: same keys, same shapes, same outputs
    torch.manual_seed(0)
    m = build_model("unet", base_channels=4, depth=2).eval()
    old = {k: v.contiguous() for k, v in m.state_dict().items()}
    m2 = build_model("unet", base_channels=4, depth=2).eval()
    m2.load_state_dict(old)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(m(x), m2(x))
    assert m2.encoder.stages[1][0].weight.is_contiguous(memory_format=torch.channels_last)
