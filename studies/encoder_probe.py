"""What does a pretrained encoder know about the segmentation target? A linear probe per stage.

For each encoder (random init and pretrained checkpoints), the features of
every stage are upsampled to a common grid and a ridge regression is fitted,
pixel by pixel, from them to the mask of every labelled training frame; the
probe is then thresholded and scored (Dice) on the test frames. No fine-tuning,
so this separates "the encoder's features carry the target" from "fine-tuning
gets it out of them".

    .venv/bin/python studies/encoder_probe.py --init random \
        --init /tmp/payoff/pre_simclr_1600/checkpoint.pt --out /tmp/probe
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sslseg.data.batches import LabelledSet, Normalizer
from sslseg.engine.checkpoint import load_checkpoint
from sslseg.evaluate.probe import probe_encoder
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import by_split, load_cases
from sslseg.finetune.transfer import transfer_weights
from sslseg.models.build import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", action="append", default=[], help="'random', 'random:SEED' or a pretraining checkpoint")
    ap.add_argument("--num-cases", type=int, default=48)
    ap.add_argument("--out", default="/tmp/sslseg-probe")
    args = ap.parse_args()
    cfg = RunConfig()
    cfg.data.options = {"num_cases": args.num_cases}
    cases = load_cases(cfg, Path(args.out))
    train, test = by_split(cases, "train"), by_split(cases, "test")
    size = cfg.data.image_size
    header = False
    for init in args.init or ["random"]:
        torch.manual_seed(int(init.partition(":")[2] or 0) if init.startswith("random") else 0)
        if init.startswith("random"):
            model = build_model("unet", base_channels=16, depth=4, norm="batch")
            normalizer = Normalizer.fit(train, seed=cfg.seed)
        else:
            ckpt = load_checkpoint(init)
            model = build_model(ckpt["arch"], **ckpt["model_kwargs"])
            transfer_weights(model, ckpt["state_dict"], parts=("encoder",))
            normalizer = Normalizer.from_dict(ckpt["preprocess"]["normalizer"])
        tr, te = LabelledSet(train, size, normalizer), LabelledSet(test, size, normalizer)
        scores = probe_encoder(model.encoder, tr.images, tr.masks, te.images, te.masks)
        if not header:
            print(f"{'encoder':<40} " + " ".join(f"{k:>6}" for k in scores))
            header = True
        name = init if init.startswith("random") else Path(init).parent.name
        print(f"{name:<40} " + " ".join(f"{d:6.3f}" for d in scores.values()), flush=True)


if __name__ == "__main__":
    main()
