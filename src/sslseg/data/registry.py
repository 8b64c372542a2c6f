"""Data set specs: ``NAME`` or ``NAME:PATH`` -> list of :class:`Case`."""

from __future__ import annotations

from collections.abc import Callable

from .sample import Case

# name -> (loader(path or None, **options) -> cases, needs_path, one-line description)
DATASETS: dict[str, tuple[Callable[..., list[Case]], bool, str]] = {}


def register(name: str, needs_path: bool, description: str):
    def deco(fn):
        DATASETS[name] = (fn, needs_path, description)
        return fn

    return deco


def valid_specs() -> str:
    return ", ".join(f"{n}:PATH" if p else n for n, (_, p, _) in sorted(DATASETS.items()))


def load_dataset(spec: str, **options) -> list[Case]:
    """Load the cases named by ``spec`` (e.g. ``synthetic-echo``, ``echonet:/data/EchoNet``).

    Raises:
        ValueError: unknown name, a missing path, or bad data (message names the file).
    """
    name, _, path = spec.partition(":")
    if name not in DATASETS:
        raise ValueError(f"unknown data set {spec!r}; choose one of {valid_specs()}")
    fn, needs_path, _ = DATASETS[name]
    if needs_path and not path:
        raise ValueError(f"data set {name!r} needs a path: {name}:PATH")
    if not needs_path and path:
        raise ValueError(f"data set {name!r} takes no path (got {path!r})")
    cases = _call_reader(fn, name, path, **options) if needs_path else _call_reader(fn, name, **options)
    if not cases:
        raise ValueError(f"data set {spec!r} holds no usable case")
    return cases


@register("synthetic-echo", False, "built-in synthetic apical four-chamber echo videos (112x112)")
def _synthetic_echo(*, num_cases: int = 40, seed: int = 0, num_frames: int = 32, size: int = 112) -> list[Case]:
    from .synthetic import synthetic_echo

    return synthetic_echo(num_cases=num_cases, seed=seed, num_frames=num_frames, size=size)


def _call_reader(fn, name: str, *args, **options) -> list[Case]:
    """Call a reader, turning an unknown option into a one-line error listing the valid ones."""
    import inspect

    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn(*args, **options)  # the reader checks its own options
    valid = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"{name}: unknown option {unknown[0]!r}; valid options: {', '.join(valid)}")
    check_options(name, {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}, options)
    return fn(*args, **options)


# options whose values have a floor (the built-in generators cannot draw less)
OPTION_MINIMUM = {"num_cases": 1, "num_frames": 1, "num_slices": 1, "size": 16}


def check_options(name: str, defaults: dict, options: dict) -> None:
    """A reader option of the wrong type, or below its floor, as one line naming it.

    The type is the default's where that is plain (an integer option takes an integer,
    a flag true or false); options that take several types are checked by their reader.
    """
    for k, v in options.items():
        d = defaults.get(k)
        if isinstance(d, bool) and not isinstance(v, bool):
            raise ValueError(f"{name}: option {k} = {v!r} is not allowed: expected true or false")
        if isinstance(d, int) and not isinstance(d, bool) and (not isinstance(v, int) or isinstance(v, bool)):
            raise ValueError(f"{name}: option {k} = {v!r} is not allowed: expected an integer")
        if isinstance(d, float) and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise ValueError(f"{name}: option {k} = {v!r} is not allowed: expected a number")
        if k in OPTION_MINIMUM and isinstance(v, int) and v < OPTION_MINIMUM[k]:
            raise ValueError(f"{name}: option {k} = {v!r} is not allowed: expected an integer >= {OPTION_MINIMUM[k]}")


@register("synthetic-mri", False, "built-in synthetic T2 prostate MRI volumes (slices; 1 PZ, 2 TZ)")
def _synthetic_mri(*, num_cases: int = 16, seed: int = 0, num_slices: int = 20, size: int = 96) -> list[Case]:
    from .synthetic_mri import synthetic_mri

    return synthetic_mri(num_cases=num_cases, seed=seed, num_slices=num_slices, size=size)


@register("echonet", True, "EchoNet-Dynamic: FileList.csv, VolumeTracings.csv, Videos/*.avi (official splits)")
def _echonet(path: str, **options) -> list[Case]:
    from .echonet import load_echonet

    return _call_reader(load_echonet, "echonet", path, **options)


@register("camus", True, "CAMUS 2CH/4CH echo, MetaImage or NIfTI release (options: labels, views, labelled)")
def _camus(path: str, **options) -> list[Case]:
    from .camus import load_camus

    return _call_reader(load_camus, "camus", path, **options)


@register("decathlon", True, "Medical Segmentation Decathlon task folder, 2D slices (options: modality, merge, axis, empty_slices)")
def _decathlon(path: str, **options) -> list[Case]:
    from .decathlon import load_decathlon

    return _call_reader(load_decathlon, "decathlon", path, **options)


@register("folder", True, "images/ + masks/ (+ unlabelled/) of PNG, TIFF, NIfTI, MetaImage or DICOM files")
def _folder(path: str, **options) -> list[Case]:
    from .folder import load_folder

    return _call_reader(load_folder, "folder", path, **options)


@register("dicom", True, "DICOM files or cines (unlabelled), spacing from the tags")
def _dicom(path: str, **options) -> list[Case]:
    from .dicom import load_dicom

    return _call_reader(load_dicom, "dicom", path, **options)
