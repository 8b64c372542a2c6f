"""The contracts behind trustworthy numbers, each pinned by a test that fails when it breaks.

Each test below was checked by planting the bug it names (once, by hand) and
watching it fail: pretraining on every case; fine-tuning on a split other than
the checkpoint's; background averaged into the scores; HD95 in pixels; BYOL
pairing a view with its own target; the EMA skipping the target projector;
noise added to the masked pixels instead of replacing them; sigmoid instead of
softmax; a checkpoint written in place.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslseg.data.batches import FramePool, Normalizer
from sslseg.data.sample import Case
from sslseg.data.splits import apply_splits, assign_splits
from sslseg.evaluate.inference import score_cases
from sslseg.evaluate.metrics import image_diagonal
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import run_finetune, run_pretrain
from sslseg.models.build import build_model
from sslseg.pretrain.build import build_method


class Tripwire:
    """A case's frames that fail the test when read (shape and dtype may be looked at)."""

    def __init__(self, frames: np.ndarray, case_id: str, split: str) -> None:
        self.shape, self.dtype, self.ndim = frames.shape, frames.dtype, frames.ndim
        self.where = f"{split} case {case_id!r}"

    def __getitem__(self, key):
        raise AssertionError(f"pretraining read a frame of {self.where}")

    def __array__(self, *args, **kwargs):
        raise AssertionError(f"pretraining read the frames of {self.where}")


def _cases(disc_case, n: int = 10) -> list[Case]:
    cases = [disc_case(f"case{i:02d}", seed=i) for i in range(n)]
    apply_splits(cases, assign_splits(cases, 0.2, 0.3, seed=0))
    return cases


def _cfg(method: str = "simclr", **options) -> RunConfig:
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 2}
    cfg.pretrain.method, cfg.pretrain.options = method, options
    cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.warmup_steps = 2, 8, 0
    cfg.finetune.steps, cfg.finetune.batch_size, cfg.finetune.val_every = 2, 2, 1
    cfg.finetune.labels = "2"
    return cfg


@pytest.mark.parametrize("method, options, partitioned", [
    ("simclr", {}, False),
    ("global_contrastive", {"strategy": "GD"}, True),
    ("global_contrastive", {"strategy": "GR"}, False),  # G^R as published: frames drawn across cases
])
def test_pretraining_never_reads_a_validation_or_test_frame(tmp_path, monkeypatch, method, options, partitioned,
                                                           make_disc_case):
    cases = _cases(make_disc_case)
    assert {c.split for c in cases} == {"train", "val", "test"}
    for c in cases:
        if c.split != "train":
            c.frames = Tripwire(c.frames, c.case_id, c.split)
    used = []
    for name in ("indices", "meta_indices"):  # the two draws a pretraining batch comes from
        real = getattr(FramePool, name)
        monkeypatch.setattr(FramePool, name, lambda self, *a, _r=real, _n=name, **k: used.append(_n) or _r(self, *a, **k))
    run_pretrain(_cfg(method, **options), tmp_path / "pre", cases)
    assert set(used) == {"meta_indices" if partitioned else "indices"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, make_disc_case) -> tuple[Path, dict[str, str]]:
    cases = _cases(make_disc_case)
    ckpt = run_pretrain(_cfg(), tmp_path_factory.mktemp("pre"), cases)
    return ckpt, {c.case_id: c.split for c in cases}


def test_finetuning_reuses_the_checkpoint_split(tmp_path, pretrained, make_disc_case):
    disc_case = make_disc_case
    ckpt, splits = pretrained
    cfg = _cfg()
    cfg.finetune.init = str(ckpt)
    # cases read afresh, no split yet: the checkpoint's split is applied, labels come from its train cases
    fresh = [disc_case(f"case{i:02d}", seed=i) for i in range(10)]
    out = run_finetune(cfg, tmp_path / "ft", fresh)
    labelled = torch.load(out, weights_only=True)["labelled_cases"]
    assert labelled and all(splits[c] == "train" for c in labelled)
    assert {c.case_id: c.split for c in fresh} == splits
    # a split drawn with another seed would move cases: refused, so no checkpoint test case is ever labelled
    other = [disc_case(f"case{i:02d}", seed=i) for i in range(10)]
    apply_splits(other, assign_splits(other, 0.2, 0.3, seed=5))
    assert any(splits[c.case_id] == "test" and c.split == "train" for c in other)
    with pytest.raises(ValueError, match="different train/val/test split"):
        run_finetune(cfg, tmp_path / "ft2", other)


class Oracle(torch.nn.Module):
    """Predicts the class written in the image: logits one-hot of the (rounded) pixel value."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.k = num_classes
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return F.one_hot(x[:, 0].round().long().clamp(0, self.k - 1), self.k).permute(0, 3, 1, 2).float()


def _score(pred: np.ndarray, gt: np.ndarray, spacing, slice_mm, k: int = 2, **kw) -> dict:
    """Score a prediction ``pred`` (S, H, W) against ``gt`` through the evaluation path."""
    case = Case("v", pred.astype(np.float32), {i: gt[i] for i in range(gt.shape[0])}, spacing,
                volume=True, slice_spacing=slice_mm)
    return score_cases(Oracle(k), [case], Normalizer(0.0, 1.0, 1.0), gt.shape[-1], k, **kw)[1][0]


def test_evaluation_scores_foreground_only_and_hd95_in_mm_in_3d():
    # one voxel of truth, one predicted voxel elsewhere: foreground Dice 0 (background would be ~1),
    # HD95 the physical distance between them, slice spacing included
    gt = np.zeros((6, 16, 16), np.int64)
    pred = np.zeros_like(gt)
    gt[1, 4, 4] = 1
    pred[3, 7, 8] = 1
    spacing, slice_mm = (0.5, 2.0), 3.0
    row = _score(pred, gt, spacing, slice_mm)
    assert row["convention"] == "volume"
    assert row["dice"] == 0.0
    assert row["hd95"] == pytest.approx(math.hypot(2 * slice_mm, 3 * spacing[0], 4 * spacing[1]), rel=1e-5)
    assert row["hd95_penalised"] == 0


def test_volume_dice_counts_false_positives_on_empty_slices():
    # truth: a 4x4 square on slices 1-4; prediction: the same plus a 4x4 square on the empty slice 5
    gt = np.zeros((6, 12, 12), np.int64)
    gt[1:5, 4:8, 4:8] = 1
    pred = gt.copy()
    pred[5, 4:8, 4:8] = 1
    row = _score(pred, gt, (1.0, 1.0), 2.0)
    assert row["dice"] == pytest.approx(2 * 64 / (64 + 80))  # 3D Dice of the volume
    assert row["dice_frames"] == pytest.approx(4 / 5)  # slices 1-4 perfect, slice 5 a false positive (0)
    assert row["empty_truth_fp"] == 1
    assert row["dice_pooled"] == pytest.approx(row["dice"])


def test_empty_prediction_hd95_is_penalised_and_counted():
    gt = np.zeros((4, 10, 10), np.int64)
    gt[1:3, 2:6, 2:6] = 1
    pred = np.zeros_like(gt)
    row = _score(pred, gt, (0.5, 0.8), 4.0)
    assert row["dice"] == 0.0
    assert row["hd95"] == pytest.approx(image_diagonal((4, 10, 10), (4.0, 0.5, 0.8)))
    assert row["hd95_penalised"] == 1 and row["hd95_undefined"] == 1
    left_out = _score(pred, gt, (0.5, 0.8), 4.0, hd95_empty="nan")
    assert math.isnan(left_out["hd95"]) and left_out["hd95_penalised"] == 0 and left_out["hd95_undefined"] == 1


def test_multiclass_volume_scores_average_foreground_classes():
    gt = np.zeros((3, 12, 12), np.int64)
    gt[:, 1:5, 1:5] = 1
    gt[:, 7:11, 7:11] = 2
    pred = gt.copy()
    pred[pred == 2] = 0  # class 2 missed: class 1 Dice 1, class 2 Dice 0, background never counted
    row = _score(pred, gt, (1.0, 1.0), 1.0, k=3)
    assert row["dice"] == pytest.approx(0.5)
    assert row["hd95_penalised"] == 1


def test_byol_pairs_each_prediction_with_the_other_views_target(monkeypatch):
    import sslseg.pretrain.byol as byol_mod

    class TwoViews:
        def views(self, x, k):
            return x, x.flip(-1) * 0.5 + 0.3  # two different, fixed views

    torch.manual_seed(0)
    method = build_method("byol", build_model("unet", base_channels=4, depth=2), augment=TwoViews())
    with torch.no_grad():  # a target that differs from the online network
        for p in list(method.target_encoder.parameters()) + list(method.target_projector.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    calls = []
    real = byol_mod.byol_loss
    monkeypatch.setattr(byol_mod, "byol_loss", lambda p, z: calls.append((p.detach(), z.detach())) or real(p, z))
    x = torch.randn(4, 1, 32, 32)
    method(x)
    v1, v2 = TwoViews().views(x, 2)
    with torch.no_grad():
        both = torch.cat([v1, v2])
        p1, p2 = method.predictor(method.projector(method.encoder(both)[-1])).chunk(2)
        z1, z2 = method.target_projector(method.target_encoder(both)[-1]).chunk(2)
    pairs = {(id(a), id(b)) for a, b in ((p1, z2), (p2, z1))}
    assert len(calls) == 2 and len(pairs) == 2
    for (p, z), (pe, ze) in zip(calls, [(p1, z2), (p2, z1)], strict=True):
        torch.testing.assert_close(p, pe)
        torch.testing.assert_close(z, ze)


def test_byol_ema_moves_every_target_part():
    torch.manual_seed(0)
    method = build_method("byol", build_model("unet", base_channels=4, depth=2), momentum=0.9)
    targets = {n: m for n, m in method.named_children() if n.startswith("target")}
    assert set(targets) == {"target_encoder", "target_projector"}
    before = {n: [p.clone() for p in m.parameters()] for n, m in targets.items()}
    with torch.no_grad():
        for p in list(method.encoder.parameters()) + list(method.projector.parameters()):
            p.add_(1.0)
    method.after_step(0, 10)  # momentum 0.9 at step 0
    online = {"target_encoder": method.encoder, "target_projector": method.projector}
    for n, m in targets.items():
        for old, new, on in zip(before[n], m.parameters(), online[n].parameters(), strict=True):
            torch.testing.assert_close(new, 0.9 * old + 0.1 * on)


def test_masked_noise_regression_replaces_the_masked_pixels():
    torch.manual_seed(0)
    method = build_method("regression", build_model("unet", base_channels=4, depth=2), mask_fraction=0.3)
    seen = []
    real = method.reconstruct
    method.reconstruct = lambda x: seen.append(x.detach().clone()) or real(x)
    x = torch.randn(2, 1, 64, 64)  # 128 squares of the default 8x8 mask, enough for a stable fraction
    for shift in (0.0, 5.0):  # the same mask and noise (same seed) on two inputs 5 apart
        torch.manual_seed(1)
        method(x + shift)
    a, b = seen
    masked = (a - x) != 0  # where the input was corrupted
    assert 0.2 < masked.float().mean() < 0.4
    torch.testing.assert_close(a[masked], b[masked])  # pure noise: does not depend on the input
    torch.testing.assert_close(b[~masked] - a[~masked], torch.full_like(a[~masked], 5.0))


@pytest.mark.parametrize("name", ["dice", "dice_ce"])
def test_multiclass_finetuning_loss_uses_softmax(name):
    from sslseg.finetune.losses import segmentation_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g) * 2
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    prob = logits.softmax(1)  # classes compete: one distribution per pixel
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((2, 3))
    dice = 1 - ((2 * inter + 1e-5) / (prob.sum((2, 3)) + onehot.sum((2, 3)) + 1e-5)).mean()
    expected = dice + (F.cross_entropy(logits, target) if name == "dice_ce" else 0)
    torch.testing.assert_close(segmentation_loss(name)(logits, target), expected)


def test_interrupted_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    import sslseg.engine.checkpoint as ck

    model = build_model("unet", base_channels=4, depth=2)
    path = tmp_path / "checkpoint.pt"
    ck.save_checkpoint(path, model, "unet", {"base_channels": 4, "depth": 2}, stage="pretrain")
    before = path.read_bytes()

    def interrupted(obj, f, *a, **k):  # half a file, then the process is stopped
        if isinstance(f, (str, Path)):
            f = open(f, "wb")  # noqa: SIM115
        f.write(before[: len(before) // 2])
        f.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", interrupted)
    trained = copy.deepcopy(model)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, trained, "unet", {"base_channels": 4, "depth": 2}, stage="finetune")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ck.load_checkpoint(path)["stage"] == "pretrain"
    assert not [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]  # no temporary file left


# layers that sit below others (DESIGN.md, "The flow"): a module of the first may not import the second
LOWER_NEVER_IMPORTS = {"report": ("experiments", "cli")}


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (a module of ``package``), relative ones resolved."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    here = package.split(".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out += [(node.lineno, module)] if node.module else [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


@pytest.mark.parametrize("lower", sorted(LOWER_NEVER_IMPORTS))
def test_a_lower_layer_never_imports_a_higher_one(lower):
    import sslseg

    root = Path(sslseg.__file__).parent
    files = sorted((root / lower).rglob("*.py"))
    assert files, f"no modules under sslseg/{lower}"
    arrows = []
    for path in files:
        package = "sslseg." + ".".join(path.relative_to(root).parent.parts)
        for line, module in _imports(path, package):
            for higher in LOWER_NEVER_IMPORTS[lower]:
                if module == f"sslseg.{higher}" or module.startswith(f"sslseg.{higher}."):
                    arrows.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    assert not arrows, "a lower layer imports a higher one: " + "; ".join(arrows)
