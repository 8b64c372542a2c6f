"""Mutate valid inputs at random and count unclean crashes of the readers.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/fuzz_inputs.py --cases 10000

Valid seeds are written first: a PNG, a NIfTI volume, a MetaImage (``.mha``), a
DICOM file (pydicom's bundled ``CT_small.dcm``), an AVI (FFV1, grey) and the
CSV tables the readers take (EchoNet-Dynamic's ``FileList.csv`` and
``VolumeTracings.csv``, a folder's ``cases.csv``). Each case mutates one seed
(bit flips, truncation, inserted, deleted, repeated or zeroed byte runs; for
text, characters, quotes, separators, lines and non-UTF-8 bytes) and reads it
in a forked child, through the prediction reader (``read_study``) and the
data-set reader of that format.

Outcomes: *read* (the mutation was harmless), *clean* (``ValueError`` or
``OSError`` naming the file: the command line prints one line and exits 2) and
*unclean*: any other exception, an error that does not name the file, a crash
(signal) or a hang (``--timeout``). Prints the counts per format and the unclean
cases; exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED_FORMATS = ("png", "nii.gz", "mha", "dcm", "avi", "filelist.csv", "tracings.csv", "cases.csv")


def make_seeds(folder: Path) -> dict[str, bytes]:
    """Valid example of every format, as bytes."""
    import av
    import nibabel as nib
    import SimpleITK as sitk
    from PIL import Image
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    seeds: dict[str, bytes] = {}
    Image.fromarray(img).save(folder / "s.png")
    nib.save(nib.Nifti1Image(rng.random((12, 10, 4)).astype(np.float32), np.diag([0.8, 0.8, 2.0, 1.0])),
             folder / "s.nii.gz")
    im = sitk.GetImageFromArray(rng.integers(0, 255, (3, 12, 10), dtype=np.uint8))
    im.SetSpacing((0.5, 0.5, 1.0))
    sitk.WriteImage(im, str(folder / "s.mha"))
    with av.open(str(folder / "s.avi"), "w") as c:
        s = c.add_stream("ffv1", rate=50)
        s.width, s.height, s.pix_fmt = 16, 16, "gray"
        for k in range(4):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((16, 16), 40 * k, np.uint8), format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    for ext in ("png", "nii.gz", "mha", "avi"):
        seeds[ext] = (folder / f"s.{ext}").read_bytes()
    seeds["dcm"] = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    seeds["filelist.csv"] = (b"FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n"
                             b"0X1,55.1,20.2,45.0,112,112,50,4,TRAIN\n0X2,60.0,18.0,45.0,112,112,50,4,VAL\n")
    seeds["tracings.csv"] = (b"FileName,X1,Y1,X2,Y2,Frame\n0X1.avi,51.3,20.1,60.2,80.4,0\n"
                             b"0X1.avi,45.0,30.0,66.0,30.0,0\n0X1.avi,50.0,20.0,61.0,81.0,3\n")
    seeds["cases.csv"] = b"file,case_id,split\na.png,p1,train\nb.png,p1,train\n"
    return seeds


TEXT_BITS = [b",", b'"', b"\n", b"\r", b"\t", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\xe9", b"-", b".",
             b"nan", b"inf", b"1e999", b"-1", b"", b"..", b"/", b"FileName", b"X1"]


def mutate(data: bytes, text: bool, rnd: random.Random) -> bytes:
    """One to three random edits of ``data``."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        n = len(b)
        op = rnd.choice(["flip", "truncate", "insert", "delete", "repeat", "zero", "header"] +
                        (["token", "token", "line"] if text else []))
        i = rnd.randrange(max(1, n))
        if op == "flip" and n:
            for _ in range(rnd.randint(1, 8)):
                j = rnd.randrange(n)
                b[j] ^= 1 << rnd.randrange(8)
        elif op == "truncate":
            del b[i:]
        elif op == "insert":
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        elif op == "delete":
            del b[i:i + rnd.randint(1, 64)]
        elif op == "repeat":
            b[i:i] = b[i:i + rnd.randint(1, 64)] * rnd.randint(1, 4)
        elif op == "zero":
            k = rnd.randint(1, 64)
            b[i:i + k] = bytes(len(b[i:i + k]))
        elif op == "header" and n:
            j = rnd.randrange(min(n, 400))  # most formats keep their sizes and types up front
            b[j:j + 4] = rnd.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x01\x00"])
        elif op == "token":
            b[i:i] = rnd.choice(TEXT_BITS)
        elif op == "line":
            lines = bytes(b).split(b"\n")
            k = rnd.randrange(len(lines))
            choice = rnd.random()
            if choice < 0.4:
                lines.insert(k, lines[rnd.randrange(len(lines))])
            elif choice < 0.7:
                del lines[k]
            else:
                lines[k] = b",".join(lines[k].split(b",")[: rnd.randint(0, 8)])
            b = bytearray(b"\n".join(lines))
    return bytes(b)


def read_case(kind: str, path: Path) -> None:
    """Read ``path`` as the command line would (both readers where there are two)."""
    if kind in ("png", "nii.gz", "mha", "dcm", "avi"):
        from sslseg.predict.io import read_study

        read_study(path)
        if kind != "avi":
            from sslseg.io.volumes import read_voxels

            read_voxels(path)
        else:
            from sslseg.io.video import decode_video

            decode_video(path)
    elif kind == "filelist.csv":
        from sslseg.io.tables import read_filelist

        read_filelist(path)
    elif kind == "tracings.csv":
        from sslseg.data.echonet import read_tracings

        read_tracings(path)
    elif kind == "cases.csv":
        from sslseg.data.folder import read_case_csv

        read_case_csv(path, {"a": path.parent / "a.png", "b": path.parent / "b.png"})


def run_case(kind: str, path: Path, timeout: float) -> tuple[str, str]:
    """Read in a forked child; (outcome, detail)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        outcome, detail = "read", ""
        try:
            read_case(kind, path)
        except (ValueError, OSError) as err:
            msg = str(err)
            named = str(path) in msg or path.name in msg
            outcome, detail = ("clean", "") if named else ("unclean", f"{type(err).__name__} without the file: {msg[:160]}")
        except BaseException as err:  # noqa: BLE001 - exactly what is counted
            outcome, detail = "unclean", f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
        os.write(w, f"{outcome}\t{detail}".encode()[:4000])
        os._exit(0)
    os.close(w)
    t0 = time.perf_counter()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "unclean", f"hang (> {timeout:g} s)"
        time.sleep(0.001)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        return "unclean", f"crash: signal {os.WTERMSIG(status)}"
    outcome, _, detail = text.partition("\t")
    return (outcome or "unclean"), (detail or ("" if outcome else "no report"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before a read counts as a hang")
    ap.add_argument("--formats", default=",".join(SEED_FORMATS))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ["SSLSEG_CACHE"] = tempfile.mkdtemp(prefix="fuzz_cache_")
    work = Path(tempfile.mkdtemp(prefix="fuzz_"))
    seeds = make_seeds(work)
    formats = args.formats.split(",")
    for kind in formats:  # every seed must read cleanly, or the fuzzing means nothing
        path = work / f"seed.{kind}" if not kind.endswith(".csv") else work / kind
        path.write_bytes(seeds[kind])
        outcome, detail = run_case(kind, path, args.timeout)
        if outcome != "read":
            print(f"seed {kind} does not read: {outcome} {detail}")
            return 1
    rnd = random.Random(args.seed)
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in formats}
    unclean: list[str] = []
    t0 = time.perf_counter()
    n = 0
    for n in range(1, args.cases + 1):
        kind = formats[(n - 1) % len(formats)]
        path = work / f"case{n % 7}.{kind}" if not kind.endswith(".csv") else work / f"c{n % 7}" / kind
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutate(seeds[kind], kind.endswith(".csv"), rnd))
        outcome, detail = run_case(kind, path, args.timeout)
        counts[kind][outcome] += 1
        if outcome == "unclean":
            keep = work / "unclean" / f"{n}.{kind}"
            keep.parent.mkdir(exist_ok=True)
            keep.write_bytes(path.read_bytes())
            unclean.append(f"case {n} ({kind}, kept as {keep}): {detail}")
        if args.seconds and time.perf_counter() - t0 > args.seconds:
            break
    total = sum(sum(c.values()) for c in counts.values())
    print(f"{total} cases in {time.perf_counter() - t0:.0f} s")
    for kind, c in counts.items():
        print(f"  {kind:13s} read {c['read']:5d}  clean error {c['clean']:5d}  unclean {c['unclean']:4d}")
    for line in unclean[:50]:
        print(line)
    print(f"unclean: {len(unclean)} of {total}")
    return 1 if unclean else 0


if __name__ == "__main__":
    sys.exit(main())
