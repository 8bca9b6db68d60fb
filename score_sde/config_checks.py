"""Up-front validation of ml_collections configs: each failure is a ValueError that names the
field, the bad value and what is allowed, raised before anything is built or compiled."""
from typing import Any, Iterable

_MISSING = object()


def get(config, field: str) -> Any:
  """The value at dotted path `field` (e.g. 'training.batch_size'); ValueError if absent."""
  node = config
  for i, part in enumerate(field.split('.')):
    child = node.get(part, _MISSING) if hasattr(node, 'get') else _MISSING
    if child is _MISSING:
      parent = '.'.join(field.split('.')[:i]) or 'the config'
      raise ValueError(f'Config field {field} is missing: {parent} has no entry {part!r}.')
    node = child
  return node


def choice(config, field: str, allowed: Iterable[str]) -> str:
  """A string field whose value must be one of `allowed`."""
  value = get(config, field)
  allowed = sorted(allowed)
  if value not in allowed:
    raise ValueError(f'Config field {field} = {value!r} is not supported; allowed: {allowed}.')
  return value


def positive_int(config, field: str) -> int:
  """An integer field that must be >= 1."""
  value = get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'Config field {field} = {value!r} must be a positive integer.')
  return value


def positive_float(config, field: str) -> float:
  """A real field that must be > 0."""
  value = get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise ValueError(f'Config field {field} = {value!r} must be a positive number.')
  return float(value)


def unit_interval(config, field: str) -> float:
  """A real field that must lie in [0, 1)."""
  value = get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
    raise ValueError(f'Config field {field} = {value!r} must be a number in [0, 1).')
  return float(value)
