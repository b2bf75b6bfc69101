"""Name -> builder registries, so configuration chooses models, losses and optimizers by name.

After timm's `create_model` and detectron2's `Registry`: one entry point per kind, every builder
registered under a name, keyword arguments passed through. No code is ever imported from config.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = fn
            return fn
        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"Unknown {self.kind} '{name}'. Expected one of: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MODELS: Registry = Registry("model")
LOSSES: Registry = Registry("loss")
OPTIMIZERS: Registry = Registry("optimizer")
