"""Global and local contrastive pretraining (Chaitanya et al., NeurIPS 2020).

The ISMRM abstract (Umapathy et al. 2022): "the encoder is first trained to
contrast global representations of images, followed by training the decoder to
contrast representations of local patches in image". Three methods live here:

- :class:`GlobalContrastive` (``global_contrastive``): encoder + projection head g1,
  strategies G^R, G^{D-}, G^D over partitions of each case.
- :class:`LocalContrastive` (``local_contrastive``): encoder frozen; the first
  ``num_blocks`` decoder blocks + g2 (two 1x1 convs); regions at the same
  position in two intensity-augmented views are positives.
- :class:`GlobalLocal` (``global_local``): the staged schedule, global for the
  first ``global_fraction`` of the steps, then local with a learning-rate
  schedule of its own; the checkpoint carries both encoder and decoder.

Partitions: each case is cut into ``n_parts`` equal partitions along its slice
axis (MRI volumes) or time axis (echo videos); a batch holds ``m`` cases x one
random frame per partition (reference: ``n_parts=4``). For MRI, partition k of
two volumes shows similar anatomy; for echo, partitions along time are cardiac
phases of different patients, a weaker notion of "similar content", so G^R or
G^{D-} may suit echo better than G^D.

Deviations: g1 pools the deepest feature map globally before the MLP (the
reference flattens a fixed-size map, which ties it to one input size); each
local region is a ``region_size`` window average-pooled (the reference
flattens a 3x3 window into a dense layer); every other region of the image is
a negative (the reference lists 5 neighbours).

[0] https://arxiv.org/abs/2006.10511 ; reference code krishnabits001/domain_specific_cl
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import intensity
from ..augment.views import ViewAugment
from ..data.batches import images_and_partitions
from ..errors import UserError
from ..models.heads import ProjectionHead
from .contract import PretextBase
from .losses import check_temperature, global_contrastive, local_contrastive


class GlobalContrastive(PretextBase):
    """Global contrastive loss on the encoder. ``forward(batch)``; batch is images or a dict
    ``{"images", "partition"}`` (see ``FramePool.meta_indices``)."""

    trains = ("encoder",)

    def __init__(
        self,
        model: nn.Module,
        strategy: str = "GD",
        temperature: float = 0.1,
        n_parts: int = 4,
        proj_hidden: int = 1024,
        proj_dim: int = 128,
        augment: ViewAugment | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        # on several processes, positives and negatives come from every rank's images
        self.gather_distributed = gather_distributed
        self.g1 = ProjectionHead(self.encoder.out_channels[-1], proj_hidden, proj_dim)
        self.strategy = strategy
        self.temperature = check_temperature(temperature)
        self.n_parts = n_parts
        # reference: random crop (100 of 192 px) resized back, brightness +-0.3, contrast 0.7-1.3
        self.augment = augment or ViewAugment(crop_scale=(0.27, 1.0), hflip_p=0.0, brightness=0.3,
                                              contrast=(0.7, 1.3), blur_p=0.0, noise_p=0.0, gamma_p=0.0)
        global_contrastive(torch.zeros(2, 1), torch.ones(2, 1), None, strategy)  # validate the name early

    @property
    def partitions(self) -> int | None:
        """Partitions per case of the batch this method needs; None: frames drawn across all cases.

        G^R is "the default SimCLR formulation, with images in a batch sampled from
        all volumes" (Chaitanya et al.); only G^D and G^{D-} need Chaitanya's
        partitioned batch (m cases x one frame per partition).
        """
        return None if self.strategy == "GR" else self.n_parts

    def global_loss(self, images: torch.Tensor, partition: torch.Tensor | None) -> torch.Tensor:
        v1, v2 = self.augment.views(images, 2)
        z1, z2 = self.g1(self.encoder(torch.cat([v1, v2]))[-1]).chunk(2)
        return global_contrastive(z1, z2, partition, self.strategy, self.temperature, self.gather_distributed)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        images, partition = images_and_partitions(batch)
        return {"loss": self.global_loss(images, partition)}


def region_centres(h: int, w: int, count: int = 13, size: int = 3) -> list[tuple[int, int]]:
    """Fixed region positions on an ``h x w`` map, as in the reference code.

    13 = the 3x3 lattice of corners, edge midpoints and centre, plus the four
    quarter points; any other count is a ``sqrt(count)`` square grid. Windows of
    ``size`` fit inside the map.
    """
    m = size // 2
    ys = lambda f: int(round(m + f * (h - 1 - 2 * m)))  # noqa: E731
    xs = lambda f: int(round(m + f * (w - 1 - 2 * m)))  # noqa: E731
    if count == 13:
        fr = [(a, b) for a in (0, 0.5, 1) for b in (0, 0.5, 1)] + [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]
    else:
        g = max(1, int(round(count**0.5)))
        steps = [i / max(1, g - 1) for i in range(g)]
        fr = [(a, b) for a in steps for b in steps]
    return [(ys(a), xs(b)) for a, b in fr]


def pool_regions(f: torch.Tensor, centres: list[tuple[int, int]], size: int) -> torch.Tensor:
    """Average-pool ``size x size`` windows around ``centres``: ``(B, C, H, W)`` -> ``(B, R, C)``."""
    pooled = F.avg_pool2d(f, size, stride=1, padding=size // 2, count_include_pad=False) if size > 1 else f
    idx_y = torch.tensor([c[0] for c in centres], device=f.device)
    idx_x = torch.tensor([c[1] for c in centres], device=f.device)
    return pooled[:, :, idx_y, idx_x].transpose(1, 2)


def intensity_views(x: torch.Tensor) -> torch.Tensor:
    """Intensity-only augmentation: positions stay put, so regions correspond across views."""
    x = intensity.brightness_contrast(x, 0.3, (0.7, 1.3), 1.0)
    x = intensity.gamma(x, 0.3, 0.5)
    return intensity.gaussian_noise(x, 0.05, 0.5)


class LocalContrastive(PretextBase):
    """Local contrastive loss on the decoder with the encoder frozen.

    Args:
        model: a UNet-like ``SegmentationModel`` whose decoder accepts ``num_blocks``.
        num_blocks: decoder blocks used (reference: 3).
        num_regions: regions per image (reference: 13).
        region_size: window side on the feature map (reference: 3).
        temperature: 0.1.
        freeze_encoder: keep the encoder fixed (True in the reference, after the global stage).
    """

    trains = ("encoder", "decoder")
    partitions = None  # plain frames

    def __init__(
        self,
        model: nn.Module,
        num_blocks: int = 3,
        num_regions: int = 13,
        region_size: int = 3,
        temperature: float = 0.1,
        proj_dim: int = 128,
        freeze_encoder: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        n_dec = len(getattr(model.decoder, "blocks", []))
        if n_dec == 0:
            raise UserError("local contrastive pretraining needs a UNet-style decoder with blocks")
        self.num_blocks = min(num_blocks, n_dec)
        width = model.decoder.out_channels[self.num_blocks - 1]
        # g2: "two 1x1 convolutions" (reference), BN + ReLU between them
        self.g2 = nn.Sequential(
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, proj_dim, 1),
        )
        self.num_regions = num_regions
        self.region_size = region_size
        self.temperature = check_temperature(temperature)
        self.freeze_encoder = freeze_encoder
        # alone, with the encoder frozen, only the decoder learns anything worth transferring
        self.trains = ("decoder",) if freeze_encoder else ("encoder", "decoder")

    def local_loss(self, images: torch.Tensor) -> torch.Tensor:
        both = torch.cat([intensity_views(images), intensity_views(images)])
        if self.freeze_encoder:
            # the encoder is fixed in this stage: no gradient, and BatchNorm keeps its
            # pretrained running statistics instead of drifting to this stage's batches
            was = self.model.encoder.training
            self.model.encoder.eval()
            with torch.no_grad():
                feats = [f.detach() for f in self.model.encoder(both)]
            self.model.encoder.train(was)
        else:
            feats = self.model.encoder(both)
        f = self.g2(self.model.decoder(feats, num_blocks=self.num_blocks))
        centres = region_centres(f.shape[-2], f.shape[-1], self.num_regions, self.region_size)
        v = pool_regions(f, centres, self.region_size)  # (2B, R, D)
        v1, v2 = v.chunk(2)
        return local_contrastive(v1, v2, self.temperature)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        images, _ = images_and_partitions(batch)
        return {"loss": self.local_loss(images)}

    def frozen_modules(self) -> list[nn.Module]:
        """The partial decoder: blocks (and their 1x1 up-convolutions) past ``num_blocks`` never run."""
        decoder = self.model.decoder
        return [m for name in ("ups", "blocks") for m in list(getattr(decoder, name, []))[self.num_blocks:]]


class GlobalLocal(PretextBase):
    """The staged schedule: global contrastive (encoder), then local contrastive (decoder).

    ``after_step`` moves to the local stage after ``global_fraction`` of the steps.
    All parameters stay in the one optimiser; in each stage the other stage's
    parameters get no gradient, and AdamW skips parameters without gradients
    (so the decoder's optimiser state starts fresh in the local stage). The lr
    schedule restarts at the local stage (:meth:`schedule_restarts`): warm-up
    and cosine of its own, as the reference's separate decoder run.
    """

    trains = ("encoder", "decoder")
    # encoder + g1 get gradients in the global stage, decoder + g2 in the local one
    find_unused_parameters = True

    def __init__(self, model: nn.Module, global_fraction: float = 0.5, strategy: str = "GD",
                 temperature: float = 0.1, n_parts: int = 4, num_blocks: int = 3, num_regions: int = 13,
                 region_size: int = 3, gather_distributed: bool = True) -> None:
        super().__init__()
        if not 0 < global_fraction < 1:
            raise UserError(f"global_fraction must be in (0, 1), got {global_fraction}")
        self.glob = GlobalContrastive(model, strategy, temperature, n_parts, gather_distributed=gather_distributed)
        self.local = LocalContrastive(model, num_blocks, num_regions, region_size, temperature)
        self.n_parts = n_parts
        self.global_fraction = global_fraction
        # a buffer, so that the stage is saved in last.pt and a resumed run continues in it
        self.register_buffer("in_local_stage", torch.zeros((), dtype=torch.bool))
        # its host copy: reading the buffer on the device every step would make the host wait for the device
        self._local: bool | None = None
        self.register_load_state_dict_post_hook(GlobalLocal._forget_stage)

    @property
    def partitions(self) -> int | None:
        """The global stage's batch (see :attr:`GlobalContrastive.partitions`); the local stage uses its images."""
        return self.glob.partitions

    @property
    def stage(self) -> str:
        if self._local is None:
            self._local = bool(self.in_local_stage)
        return "local" if self._local else "global"

    @staticmethod
    def _forget_stage(module: GlobalLocal, _incompatible) -> None:
        module._local = None  # a loaded state (a resume) says which stage: read the buffer again

    def forward(self, batch) -> dict[str, torch.Tensor]:
        images, partition = images_and_partitions(batch)
        if self.stage == "global":
            return {"loss": self.glob.global_loss(images, partition)}
        return {"loss": self.local.local_loss(images)}

    def schedule_restarts(self, total_steps: int) -> list[int]:
        """The first step of the local stage, where the lr schedule starts again.

        The reference trains the decoder in a run of its own (warm-up and decay
        of its own, fresh optimiser state: its parameters had no gradient before).
        """
        return [math.ceil(self.global_fraction * total_steps)]

    def after_step(self, step: int, total_steps: int) -> None:
        local = step + 1 >= self.global_fraction * total_steps
        self.in_local_stage.fill_(local)
        self._local = local
