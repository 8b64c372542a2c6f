"""Data set specs: ``NAME`` or ``NAME:PATH`` -> list of :class:`Case`."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UserError
from ..registry import Registry
from .sample import Case, Cases

#: name -> reader ``(path or nothing, **options) -> cases``. Facts of each data set, in ``info``:
#: ``needs_path``: whether the spec is ``NAME:PATH``; ``echo_sectors``: its frames are echo sectors
#: filling a square, as EchoNet-Dynamic's (True), or are when the option it names is on (ultrasound
#: only); what prediction prepares new inputs like (:func:`sslseg.engine.trained.training_frames`)
DATASETS: Registry[Callable[..., list[Case]]] = Registry(
    "data set", shown=lambda name, entry: f"{name}:PATH" if entry.info["needs_path"] else name)


def check_spec(spec: str) -> None:
    """Raise one line when the name of ``spec`` is no registered data set (the path is not read)."""
    DATASETS.check(spec.partition(":")[0], given=spec)


def load_dataset(spec: str, **options) -> Cases:
    """Load the cases named by ``spec`` (e.g. ``synthetic-echo``, ``echonet:/data/EchoNet``).

    Returns the cases with the reader's skipped files and notes (:class:`Cases`), said once.

    Raises:
        ValueError: unknown name, a missing path, or bad data (message names the file).
    """
    name, _, path = spec.partition(":")
    entry = DATASETS.entry(name, given=spec)
    fn, needs_path = entry.value, entry.info["needs_path"]
    if needs_path and not path:
        raise UserError(f"data set {name!r} needs a path: {name}:PATH")
    if not needs_path and path:
        raise UserError(f"data set {name!r} takes no path (got {path!r})")
    cases = _call_reader(fn, name, path, **options) if needs_path else _call_reader(fn, name, **options)
    if not cases:
        raise UserError(f"data set {spec!r} holds no usable case")
    return cases if isinstance(cases, Cases) else Cases(cases)


@DATASETS.register("synthetic-echo",
                   "built-in synthetic apical four-chamber echo videos (112x112)",
                   needs_path=False, echo_sectors=True)
def _synthetic_echo(*, num_cases: int = 40, seed: int = 0, num_frames: int = 32, size: int = 112,
                    unlabelled: int = 0) -> list[Case]:
    from .synthetic import synthetic_echo

    return synthetic_echo(num_cases=num_cases, seed=seed, num_frames=num_frames, size=size, unlabelled=unlabelled)


def _call_reader(fn, name: str, *args, **options) -> list[Case]:
    """Call a reader, turning an unknown option into a one-line error listing the valid ones."""
    import inspect

    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn(*args, **options)  # the reader checks its own options
    valid = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise UserError(f"{name}: unknown option {unknown[0]!r}; valid options: {', '.join(valid)}")
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
            raise UserError(f"{name}: option {k} = {v!r} is not allowed: expected true or false")
        if isinstance(d, int) and not isinstance(d, bool) and (not isinstance(v, int) or isinstance(v, bool)):
            raise UserError(f"{name}: option {k} = {v!r} is not allowed: expected an integer")
        if isinstance(d, float) and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise UserError(f"{name}: option {k} = {v!r} is not allowed: expected a number")
        if k in OPTION_MINIMUM and isinstance(v, int) and v < OPTION_MINIMUM[k]:
            raise UserError(f"{name}: option {k} = {v!r} is not allowed: expected an integer >= {OPTION_MINIMUM[k]}")


@DATASETS.register("synthetic-mri",
                   "built-in synthetic T2 prostate MRI volumes (slices; 1 PZ, 2 TZ)",
                   needs_path=False)
def _synthetic_mri(*, num_cases: int = 16, seed: int = 0, num_slices: int = 20, size: int = 96) -> list[Case]:
    from .synthetic_mri import synthetic_mri

    return synthetic_mri(num_cases=num_cases, seed=seed, num_slices=num_slices, size=size)


@DATASETS.register("echonet",
                   "EchoNet-Dynamic: FileList.csv, VolumeTracings.csv, Videos/*.avi (official splits)",
                   needs_path=True, echo_sectors=True)
def _echonet(path: str, **options) -> list[Case]:
    from .echonet import load_echonet

    return _call_reader(load_echonet, "echonet", path, **options)


@DATASETS.register("camus",
                   "CAMUS 2CH/4CH echo, MetaImage or NIfTI release (options: labels, views, labelled)",
                   needs_path=True, echo_sectors=True)
def _camus(path: str, **options) -> list[Case]:
    from .camus import load_camus

    return _call_reader(load_camus, "camus", path, **options)


@DATASETS.register("decathlon",
                   "Medical Segmentation Decathlon task folder, 2D slices (options: modality, merge, axis, empty_slices)",
                   needs_path=True)
def _decathlon(path: str, **options) -> list[Case]:
    from .decathlon import load_decathlon

    return _call_reader(load_decathlon, "decathlon", path, **options)


@DATASETS.register("folder",
                   "images/ + masks/ (+ unlabelled/) of PNG, TIFF, NIfTI, MetaImage or DICOM files",
                   needs_path=True)
def _folder(path: str, **options) -> list[Case]:
    from .folder import load_folder

    return _call_reader(load_folder, "folder", path, **options)


@DATASETS.register("dicom", "DICOM files or cines (unlabelled), spacing from the tags", needs_path=True,
                   echo_sectors="sector")
def _dicom(path: str, **options) -> list[Case]:
    from .dicom import load_dicom

    return _call_reader(load_dicom, "dicom", path, **options)
