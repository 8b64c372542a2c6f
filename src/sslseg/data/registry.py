"""Data set specs: ``NAME`` or ``NAME:PATH`` -> list of :class:`Case`."""

from __future__ import annotations

from typing import Callable

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
    cases = fn(path, **options) if needs_path else fn(**options)
    if not cases:
        raise ValueError(f"data set {spec!r} holds no usable case")
    return cases


@register("synthetic-echo", False, "built-in synthetic apical four-chamber echo videos (112x112)")
def _synthetic_echo(num_cases: int = 40, seed: int = 0, num_frames: int = 32, size: int = 112) -> list[Case]:
    from .synthetic import synthetic_echo

    return synthetic_echo(num_cases=num_cases, seed=seed, num_frames=num_frames, size=size)
