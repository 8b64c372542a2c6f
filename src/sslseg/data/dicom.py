"""DICOM images and cines as unlabelled cases (``dicom:PATH``).

``PATH`` is a DICOM file or a folder searched recursively.  A multi-frame file
(an echo cine, a multi-frame MR) is one case whose frames are its frames;
single-frame files of one series (``SeriesInstanceUID``) are stacked into one
case, ordered by their position along the slice normal when the geometry tags
are present, else by ``InstanceNumber``, else by file name.

Pixels and pixel spacing are read as :mod:`sslseg.io.dicom` describes (grey,
``MONOCHROME1`` inverted, the modality rescale applied); 8-bit data stay
``uint8``, anything else becomes ``float32`` scaled per case
(:func:`sslseg.io.intensity.normalise_intensity`).  A file with no spacing tag
or ultrasound calibration gets ``(1, 1)`` and a note that it is unknown.

With ``sector=True`` (``--set data.options.sector=true``) ultrasound cines are
prepared as EchoNet-Dynamic's videos (:mod:`sslseg.echo.sector`), so that
pretraining on unlabelled cines sees frames as a model for EchoNet-style data
is later given them by ``sslseg predict``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.dicom import read_dicom, read_header
from ..io.files import safe_id
from ..io.intensity import normalise_intensity
from .cache import KeyIndex, cached_arrays, digest
from .paths import check_inside
from .sample import Case, Cases, common_dtype

__all__ = ["load_dicom"]

_VERSION = 1


def _scan(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        check_inside(root, p) for p in root.rglob("*")  # a link out of the folder is refused
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        and p.suffix.lower() in ("", ".dcm", ".dicom", ".ima")
    )


def load_dicom(
    path: str | os.PathLike,
    *,
    group_series: bool = True,
    intensity: str = "scale",
    sector: bool = False,
    sector_size: int = 112,
    cache_dir: str | None = None,
) -> list[Case]:
    """Unlabelled cases from DICOM files under ``path`` (see the module notes).

    Args:
        path: a DICOM file or a folder (searched recursively; files with no
            extension or ``.dcm``/``.dicom``/``.ima``).
        group_series: stack single-frame files of one series into one case.
        intensity: ``"scale"``, ``"zscore"`` or ``"none"`` for non-8-bit data.
        sector: prepare ultrasound cines (``Modality`` US) as EchoNet-Dynamic's
            videos (:mod:`sslseg.echo.sector`): the imaging sector found, the
            rest masked, the sector's square cut out and resized to
            ``sector_size``; the spacing follows.  Other cases are left as they are.
        sector_size: the side of the prepared frames (EchoNet-Dynamic's 112).
        cache_dir: cache folder (default ``$SSLSEG_CACHE`` or ``~/.cache/sslseg``).

    Raises:
        ValueError: the path does not exist or holds no usable image.
    """
    if sector and (isinstance(sector_size, bool) or not isinstance(sector_size, int) or sector_size < 8):
        raise UserError(f"dicom: sector_size must be an integer of at least 8, got {sector_size!r}")
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"{root}: file or folder not found")
    base = root.parent if root.is_file() else root
    skipped: list[str] = []
    notes: list[str] = []
    headers: list[tuple[Path, dict, tuple[int, int]]] = []
    for p in _scan(root):
        try:
            headers.append((p, *read_header(p)))
        except ValueError as err:
            skipped.append(str(err))

    groups: dict[str, list[tuple[Path, dict, tuple[int, int]]]] = defaultdict(list)
    for h in headers:
        p, meta, shape = h
        if group_series and meta["number_of_frames"] == 1 and meta["series_uid"]:
            groups[f"series:{meta['series_uid']}:{shape}"].append(h)
        else:
            groups[f"file:{p}"].append(h)

    index = KeyIndex(base, cache_dir)
    cases: list[Case] = []
    used: set[str] = set()
    for members in groups.values():
        # positions along one slice normal order a stack; radial or mixed orientations fall
        # back to the acquisition order
        parallel = len({h[1].get("orientation") for h in members}) == 1 and "slice_position" in members[0][1]
        members.sort(key=lambda h: (h[1]["slice_position"] if parallel else 0.0, h[1]["instance_number"], h[0].name))
        files = [h[0] for h in members]
        rel = os.path.relpath(files[0], base)
        if len(files) == 1:
            cid = safe_id(os.path.splitext(rel)[0])
        else:
            cid = safe_id(f"{os.path.dirname(rel) or 'series'}_series{members[0][1]['series_number'] or ''}")
        while cid in used:
            cid += "_"
        used.add(cid)
        info: dict = {}

        prepare = sector and members[0][1]["modality"].upper() == "US"
        region = members[0][1].get("us_region")

        def build(files=files, info=info, prepare=prepare, region=region):
            stack, spacing = [], None
            for f in files:
                fr, sp, meta = read_dicom(f)
                spacing = spacing or (sp, meta["spacing_source"])
                stack.append(fr)
            dtypes = {a.dtype for a in stack}
            frames = np.concatenate([a.astype(np.float32) for a in stack]) if len(dtypes) > 1 else np.concatenate(stack)
            box = np.zeros(3, np.int64)
            if prepare:
                from ..echo.sector import find_sector, prepare_frames, prepared_spacing

                sec = find_sector(frames, region)
                frames = prepare_frames(frames, sec, sector_size)
                spacing = (prepared_spacing(spacing[0], sec, sector_size), spacing[1])
                box = np.array(sec.box, np.int64)
            frames = normalise_intensity(frames, intensity, str(files[0]))
            return {"frames": frames, "spacing": np.array([*spacing[0], spacing[1] != "unknown"], dtype=np.float64),
                    "sector": box}

        try:
            keys = [index.key(f) for f in files]
            key = digest("dicom", _VERSION, keys, intensity, *(("sector", sector_size) if prepare else ()))
            arrs = cached_arrays(key, build, ("frames", "spacing", "sector"), cache_dir, group="dicom")
        except ValueError as err:
            skipped.append(str(err))
            continue
        sp = np.asarray(arrs["spacing"])
        meta = dict(members[0][1])
        meta.pop("slice_position", None)
        meta.pop("orientation", None)
        modality = str(meta.pop("modality", ""))
        meta.update(source=[str(f) for f in files])
        if prepare:
            # (top, left, side) of the square cut from the original frames
            meta["sector_box"] = [int(v) for v in np.asarray(arrs["sector"])]
        if not sp[2]:
            notes.append(f"{files[0]}: no pixel spacing tag or ultrasound calibration; spacing set to 1 pixel = 1.0 'mm'")
        cases.append(Case(cid, arrs["frames"], {}, (float(sp[0]), float(sp[1])), None, meta,  # type: ignore[arg-type]
                          volume=len(files) > 1, spacing_known=bool(sp[2]), modality=modality))
    index.save()
    if not cases:
        reason = f"; skipped: {skipped[0]}" if skipped else ""
        raise UserError(f"{root}: no usable DICOM image{reason}")
    return Cases(common_dtype(cases, notes), skipped, notes)
