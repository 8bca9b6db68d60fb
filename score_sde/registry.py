"""Name -> class registries (models, predictors, correctors) filled by class decorators."""
from typing import Optional


class Registry:
  """`register` is a class decorator (optionally with `name=`); `get` raises a ValueError that
  lists the allowed names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict = {}

  def register(self, cls=None, *, name: Optional[str] = None):
    def add(cls):
      key = cls.__name__ if name is None else name
      if key in self._entries:
        raise ValueError(f'A {self.kind} named {key!r} is already registered.')
      self._entries[key] = cls
      return cls

    return add if cls is None else add(cls)

  def get(self, name: str):
    if name not in self._entries:
      raise ValueError(f'Unknown {self.kind} {name!r}; allowed: {self.names()}.')
    return self._entries[name]

  def names(self) -> list:
    return sorted(self._entries)
