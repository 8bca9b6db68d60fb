"""Up-front validation of ml_collections configs: each failure is a ValueError that names the
field, the bad value and what is allowed, raised before anything is built or compiled."""
import difflib
from typing import Any, Iterable

from score_sde import config_schema

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


def boolean(config, field: str) -> bool:
  """A field that must be True or False."""
  value = get(config, field)
  if not isinstance(value, bool):
    raise ValueError(f'Config field {field} = {value!r} must be True or False.')
  return value


def non_negative(config, field: str) -> float:
  """A real field that must be >= 0."""
  value = get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
    raise ValueError(f'Config field {field} = {value!r} must be a number >= 0.')
  return float(value)


def positive_ints(config, field: str, allow_empty: bool = False) -> tuple:
  """A tuple (or list) field of integers >= 1; empty only if `allow_empty`."""
  value = get(config, field)
  valid = (isinstance(value, (tuple, list)) and (allow_empty or len(value) > 0) and
           all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
  if not valid:
    kind = 'a sequence' if allow_empty else 'a non-empty sequence'
    raise ValueError(f'Config field {field} = {value!r} must be {kind} of positive integers.')
  return tuple(value)


def _leaf_fields(node, prefix: str = ''):
  """Dotted names of the non-dict values of a (nested) ConfigDict or dict."""
  for key, value in node.items():
    if hasattr(value, 'items'):
      yield from _leaf_fields(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


_KNOWN_FIELDS = tuple(_leaf_fields(config_schema.FIELDS))


def all_fields_known(config) -> None:
  """Refuses a config with a field outside the schema (score_sde/config_schema.py), naming each
  unknown field and the closest known one, so a misspelt field is never silently ignored."""
  problems = []
  for field in _leaf_fields(config):
    if field not in _KNOWN_FIELDS:
      closest = difflib.get_close_matches(field, _KNOWN_FIELDS, n=1, cutoff=0.6)
      hint = f'; did you mean {closest[0]}?' if closest else '.'
      problems.append(f'{field} is not a known config field{hint}')
  if problems:
    raise ValueError(' '.join(problems) + ' (Fields are declared in score_sde/config_schema.py.)')
