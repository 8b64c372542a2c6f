"""DDP's contract for each pretext task: after the plan, every parameter that requires a gradient gets one."""

import pytest
import torch

from sslseg.models.build import build_model
from sslseg.pretrain.build import METHODS, build_method
from sslseg.pretrain.ddp import prepare_for_ddp


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=4)
    method = build_method(name, model)
    find_unused = prepare_for_ddp(method)
    images = torch.randn(4, 1, 32, 32)
    batch = {"images": images, "partition": torch.arange(4) % 4} if method.partitions else images
    steps = 2 if name == "global_local" else 1
    for step in range(steps):  # global_local: a step of each stage
        method.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
        if find_unused:
            assert name == "global_local"  # the one task whose trained set changes (by stage)
            assert missing, "find_unused_parameters is only needed when some go without"
        else:
            assert not missing, missing[:5]
        method.after_step(step, steps)
    # the segmentation head is never trained by a pretext task, and is frozen
    assert not any(p.requires_grad for p in model.head.parameters())
