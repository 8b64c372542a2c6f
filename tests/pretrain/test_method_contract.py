"""The pretraining method contract (``sslseg.pretrain.contract``): every method has it, callers use only it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslseg.data.splits import apply_splits, assign_splits
from sslseg.engine.checkpoint import load_checkpoint
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import run_pretrain
from sslseg.models.build import build_model
from sslseg.models.segmentation import PARTS
from sslseg.pretrain.build import METHODS, build_method
from sslseg.pretrain.contract import PretextBase, PretextTask
from sslseg.pretrain.ddp import prepare_for_ddp


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_the_contract_with_the_declared_types(name):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=3)
    method = build_method(name, model)
    assert isinstance(method, PretextTask) and isinstance(method, nn.Module)
    assert isinstance(method.trains, tuple) and method.trains and set(method.trains) <= set(PARTS)
    assert method.partitions is None or (isinstance(method.partitions, int) and method.partitions > 0)
    assert isinstance(method.find_unused_parameters, bool)
    assert prepare_for_ddp(method) is method.find_unused_parameters
    inside = {id(m) for m in model.modules()}
    frozen = method.frozen_modules()
    assert isinstance(frozen, list) and all(id(m) in inside for m in frozen)
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    groups = method.param_groups(1e-3)
    assert isinstance(groups, list) and all(isinstance(g, dict) and g["lr"] > 0 for g in groups)
    # every trainable parameter in exactly one group, and nothing that takes no gradient
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in method.parameters() if p.requires_grad)
    restarts = method.schedule_restarts(10)
    assert isinstance(restarts, list) and all(isinstance(r, int) and 0 < r < 10 for r in restarts)
    images = torch.randn(4, 1, 32, 32)
    batch = {"images": images, "partition": torch.arange(4) % method.partitions} if method.partitions else images
    loss = method(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert method.after_step(0, 10) is None


class ContractOnly(nn.Module):
    """A method that has the contract and nothing else: no base class, no name the callers know.

    Every member records its use, so a caller that goes around the contract (a class test,
    a probe with a default) leaves a member unread.
    """

    trains = ("encoder", "decoder")
    partitions = 2
    built: list[ContractOnly] = []

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.used: list = []
        ContractOnly.built.append(self)

    @property
    def find_unused_parameters(self) -> bool:
        self.used.append("find_unused_parameters")
        return False

    def forward(self, batch) -> dict[str, torch.Tensor]:
        self.used.append(("batch", {"images", "partition"} <= set(batch)))
        return {"loss": self.model(batch["images"]).pow(2).mean()}

    def param_groups(self, lr: float) -> list[dict]:
        self.used.append("param_groups")
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def schedule_restarts(self, total_steps: int) -> list[int]:
        self.used.append("schedule_restarts")
        return [1]

    def after_step(self, step: int, total_steps: int) -> None:
        self.used.append(("after_step", step, total_steps))

    def frozen_modules(self) -> list[nn.Module]:
        self.used.append("frozen_modules")
        return [self.model.decoder.blocks[-1]]


def test_the_pipeline_reads_a_method_only_through_its_contract(tmp_path, make_disc_case):
    cases = [make_disc_case(f"case{i:02d}", seed=i) for i in range(6)]
    apply_splits(cases, assign_splits(cases, 0.2, 0.3, seed=0))
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 2}
    cfg.pretrain.method = "contract_only"
    cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.warmup_steps = 2, 4, 0
    ContractOnly.built.clear()
    METHODS.add("contract_only", ContractOnly, "the contract and nothing else (a test)")
    try:
        ckpt = run_pretrain(cfg, tmp_path / "pre", cases)
    finally:
        METHODS.remove("contract_only")
    (task,) = ContractOnly.built
    assert isinstance(task, PretextTask) and not isinstance(task, PretextBase)
    for member in ("find_unused_parameters", "frozen_modules", "param_groups", "schedule_restarts"):
        assert member in task.used, f"the pipeline never read the method's {member}"
    assert [u for u in task.used if u[0] == "after_step"] == [("after_step", 0, 2), ("after_step", 1, 2)]
    assert [u for u in task.used if u[0] == "batch"] == [("batch", True)] * 2  # the partitioned batch it asked for
    assert not any(p.requires_grad for p in task.model.decoder.blocks[-1].parameters())  # frozen_modules
    assert not any(p.requires_grad for p in task.model.head.parameters())  # outside trains
    assert load_checkpoint(ckpt)["trained_parts"] == ["encoder", "decoder"]
