"""Named choices the user picks from: data sets, architectures, pretraining methods.

One small :class:`Registry` per kind, each entry a value and one line saying
what it is; the command line lists them (``sslseg data --list``, ``sslseg
methods``, ``sslseg archs``, ``--help``) and a wrong name ends in one line
naming the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered value, its one-line description and any facts the registry's users read (``info``)."""

    value: T
    description: str
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names of one ``kind`` (``"architecture"``) -> values, in registration order.

    ``shown(name, entry)`` is how a name is written in listings and errors
    (``echonet:PATH`` for a data set that needs a path); the name itself by default.
    """

    def __init__(self, kind: str, shown: Callable[[str, Entry[T]], str] | None = None) -> None:
        self.kind = kind
        self._shown = shown or (lambda name, entry: name)
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, value: T, description: str, **info: Any) -> T:
        """Register ``value`` as ``name``; returns ``value``."""
        self._entries[name] = Entry(value, description, info)
        return value

    def register(self, name: str, description: str, **info: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda value: self.add(name, value, description, **info)

    def remove(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str, given: str | None = None) -> Entry[T]:
        """The entry registered as ``name``.

        Raises:
            ValueError: one line naming ``given`` (default ``name``) and the valid choices.
        """
        self.check(name, given=given)
        return self._entries[name]

    def get(self, name: str) -> T:
        """The value registered as ``name`` (a wrong name: :meth:`check`'s error)."""
        return self.entry(name).value

    def check(self, name: str, also: tuple[str, ...] = (), given: str | None = None) -> None:
        """Raise one line when ``name`` is neither registered nor one of ``also`` (extra names a caller accepts).

        Raises:
            ValueError: ``unknown <kind> <given>; choose one of <also>, <names>``.
        """
        if name in self._entries or name in also:
            return
        raise UserError(f"unknown {self.kind} {given or name!r}; choose one of {self.choices(also)}")

    def choices(self, also: tuple[str, ...] = ()) -> str:
        """The valid names as written for the user, ``also`` first, then sorted: ``a, b, c``."""
        return ", ".join([*also, *sorted(self._shown(n, e) for n, e in self._entries.items())])

    def listing(self) -> dict[str, str]:
        """Shown name -> description, in registration order (``sslseg methods`` and the like)."""
        return {self._shown(n, e): e.description for n, e in self._entries.items()}
