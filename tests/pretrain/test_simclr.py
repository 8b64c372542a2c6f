import torch

from sslseg.models.build import build_model
from sslseg.pretrain.build import build_method


def test_simclr_loss_decreases_over_20_steps():
    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=2)
    method = build_method("simclr", model, temperature=0.5, proj_dim=16)
    x = torch.randn(8, 1, 24, 24)
    x[:, :, 6:18, 6:18] += torch.linspace(0, 3, 8).view(8, 1, 1, 1)  # distinguishable images
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        torch.manual_seed(1)  # the same views every step: the loss itself must go down
        loss = method(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))
    assert losses[-1] < losses[0] - 0.1, losses


def test_simclr_trains_only_encoder_and_head():
    model = build_model("unet", base_channels=4, depth=2)
    method = build_method("simclr", model)
    method(torch.randn(4, 1, 16, 16))["loss"].backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
