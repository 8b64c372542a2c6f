"""The fine-tuning mode contract (``sslseg.finetune.contract``): every mode has it, the pipeline uses only it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslseg.data.splits import apply_splits, assign_splits
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import run_finetune
from sslseg.finetune.contract import FinetuneBase, FinetuneTask
from sslseg.finetune.losses import segmentation_loss
from sslseg.finetune.modes import MODES, build_task
from sslseg.models.build import build_model


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_has_the_contract(name):
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    task = build_task(name, model, segmentation_loss("dice_ce"), None, steps=4)
    assert isinstance(task, FinetuneTask) and task.model is model
    assert isinstance(type(task).needs_unlabelled, bool) and task.unlabelled_batch is None
    assert task.after_step(0, 4) is None


class ContractOnly(nn.Module):
    """A semi-supervised mode with the contract and nothing else (no base class, no known name)."""

    needs_unlabelled = True
    built: list[ContractOnly] = []

    def __init__(self, model: nn.Module, loss: nn.Module, augment=None) -> None:
        super().__init__()
        self.model, self.loss, self.augment = model, loss, augment
        self.unlabelled_batch = 3
        self.used: list = []
        ContractOnly.built.append(self)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        self.used.append(("unlabelled", len(batch["unlabelled"])))
        return {"loss": self.loss(self.model(batch["images"]), batch["masks"])}

    def after_step(self, step: int, total_steps: int) -> None:
        self.used.append(("after_step", step, total_steps))


def test_the_pipeline_reads_a_mode_only_through_its_contract(tmp_path, make_disc_case):
    cases = [make_disc_case(f"case{i:02d}", seed=i) for i in range(6)]
    apply_splits(cases, assign_splits(cases, 0.2, 0.2, 0))
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 2}
    cfg.finetune.labels, cfg.finetune.steps, cfg.finetune.batch_size = "1", 2, 2
    cfg.finetune.val_every, cfg.finetune.augment, cfg.finetune.mode = 0, 0.0, "contract_only"
    ContractOnly.built.clear()
    MODES.add("contract_only", ContractOnly, "the contract and nothing else (a test)")
    try:
        run_finetune(cfg, tmp_path / "ft", cases)
    finally:
        MODES.remove("contract_only")
    (task,) = ContractOnly.built
    assert isinstance(task, FinetuneTask) and not isinstance(task, FinetuneBase)
    assert task.used == [("unlabelled", 3), ("after_step", 0, 2), ("unlabelled", 3), ("after_step", 1, 2)]
