"""What does a pretrained encoder know about the segmentation target? A linear probe per stage.

For each encoder (random init and pretrained checkpoints), the features of
every stage are upsampled to a common grid and a ridge regression is fitted,
pixel by pixel, from them to the mask of every labelled training frame; the
probe is then thresholded and scored (Dice) on the test frames. No fine-tuning,
so this separates "the encoder's features carry the target" from "fine-tuning
gets it out of them". Beside the probe, ``erank`` is the effective rank of the
deepest stage's pooled features over the labelled training frames
(``sslseg.evaluate.probe.effective_rank``): low means collapsed.

    .venv/bin/python studies/encoder_probe.py --init random \
        --init /tmp/payoff/pre_simclr_1600/checkpoint.pt --out /tmp/probe

With ``--csv FILE`` each encoder's row is appended to FILE, and encoders
already in it are skipped (so a study can call it again as checkpoints appear).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from sslseg.data.batches import LabelledSet, Normalizer
from sslseg.engine.checkpoint import load_checkpoint
from sslseg.evaluate.probe import effective_rank, pooled_features, probe_encoder
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import by_split, load_cases
from sslseg.finetune.transfer import transfer_weights
from sslseg.models.build import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", action="append", default=[], help="'random', 'random:SEED' or a pretraining checkpoint")
    ap.add_argument("--num-cases", type=int, default=48)
    ap.add_argument("--image-size", type=int, default=112, help="the size the encoders were pretrained at")
    ap.add_argument("--out", default="/tmp/sslseg-probe")
    ap.add_argument("--csv", help="append one row per encoder here; skip encoders already in it")
    args = ap.parse_args()
    done = set()
    if args.csv and Path(args.csv).exists():
        done = {r["encoder"] for r in csv.DictReader(open(args.csv))}
    inits = [i for i in args.init or ["random"] if name_of(i) not in done]
    if not inits:
        return
    cfg = RunConfig()
    cfg.data.options = {"num_cases": args.num_cases}
    cfg.data.image_size = args.image_size
    cases = load_cases(cfg, Path(args.out))
    train, test = by_split(cases, "train"), by_split(cases, "test")
    size = cfg.data.image_size
    header = False
    for init in inits:
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
        scores["erank"] = effective_rank(pooled_features(model.encoder, tr.images))
        if not header:
            print(f"{'encoder':<40} " + " ".join(f"{k:>6}" for k in scores))
            header = True
        name = name_of(init)
        if args.csv:
            new = not Path(args.csv).exists()
            with open(args.csv, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["encoder", *scores])
                if new:
                    w.writeheader()
                w.writerow({"encoder": name, **{k: round(v, 4) for k, v in scores.items()}})
        print(f"{name:<40} " + " ".join(f"{d:6.3f}" if k != "erank" else f"{d:6.1f}" for k, d in scores.items()), flush=True)


def name_of(init: str) -> str:
    """How an encoder is named in the output: ``random[:SEED]``, or the checkpoint's run folder (with its sweep's)."""
    if init.startswith("random"):
        return init
    run = Path(init).parent
    # a sweep's pretraining (SWEEP/pretrain/RUN/checkpoint.pt) is named with its sweep: runs of several sweeps share names
    return f"{run.parent.parent.name}/{run.name}" if run.parent.name == "pretrain" else run.name


if __name__ == "__main__":
    main()
