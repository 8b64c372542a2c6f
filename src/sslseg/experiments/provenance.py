"""What a rerun needs besides ``config.yaml``: the command line, the git commit, package versions, resolved values.

Every run folder (and a sweep folder) gets ``provenance.json``::

    {"command": "sslseg sweep configs/x.yaml --out runs/x", "cwd": ..., "git_commit": "ae818d1...",
     "git_dirty": false, "python": "3.11.9", "platform": ..., "device": ..., "packages": {"torch": ...},
     "resolved": {"pretrain": {"steps": 600, "options": {"temperature": 0.1, "augment": {...}}}}}

``resolved`` holds what ``config.yaml`` leaves to the code: a method's keyword
defaults and its augmentation recipe, the step count drawn from epochs, the
encoder-freeze steps chosen automatically, the labelled cases.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from ..environment import environment


def plain(value):
    """A YAML/JSON-safe copy: dataclasses as dicts, tuples as lists, other objects by ``repr``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def resolved_options(method, given: dict) -> dict:
    """Every keyword of a built pretraining method: ``given`` plus the defaults it left to the class.

    A keyword the method keeps as an attribute is read from it (so ``augment=None``
    shows the view recipe actually used); others come from the signature.
    """
    out = {}
    for name, p in inspect.signature(type(method)).parameters.items():
        if name in ("self", "model") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        attr = getattr(method, name, None)
        if name in given:
            value = given[name]
        elif dataclasses.is_dataclass(attr) or isinstance(attr, (bool, int, float, str, tuple, list)):
            value = attr
        else:
            value = p.default
        out[name] = plain(value)
    return out


def write_provenance(out_dir: str | Path, resolved: dict | None = None) -> Path:
    """Write ``out_dir/provenance.json`` (atomically): :func:`environment` plus ``resolved`` values."""
    from ..data.splits import write_json

    path = Path(out_dir) / "provenance.json"
    write_json(path, {**environment(), "resolved": plain(resolved or {})})
    return path
