"""bf16-mixed trains on the CPU: the convolutions run in bfloat16 and the loss falls."""

import numpy as np
import torch

from sslseg.engine.loop import LoopConfig, fit
from sslseg.finetune.losses import segmentation_loss
from sslseg.finetune.task import SupervisedTask
from sslseg.models.build import build_model


def _discs(n: int, size: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.uniform(8, 16), rng.uniform(8, 16), rng.uniform(3, 6)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        imgs.append(np.where(m, 1.0, -1.0) + rng.normal(0, 0.3, (size, size)))
        masks.append(m)
    return torch.tensor(np.array(imgs), dtype=torch.float32)[:, None], torch.tensor(np.array(masks), dtype=torch.long)


def test_bf16_mixed_loss_falls_on_cpu():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    dtypes = set()
    model.encoder.stages[0].register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    x, y = _discs(8, size=24)
    task = SupervisedTask(model, segmentation_loss("dice_ce"))
    # bf16 is slow on CPUs without native bf16 (this one: 8x slower than fp32): few, small steps
    res = fit(task, lambda s: (x[(s % 2) * 4:(s % 2) * 4 + 4], y[(s % 2) * 4:(s % 2) * 4 + 4]),
              LoopConfig(steps=12, weight_decay=0.0, lr=2e-2, log_every=3, accelerator="cpu", precision="bf16-mixed"))
    assert torch.bfloat16 in dtypes  # autocast was on
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0], losses
