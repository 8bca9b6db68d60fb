"""The installed package: entry point, dependencies, and no TensorFlow anywhere beneath it."""
import importlib.metadata
import re

import pytest


def requirement_closure(name: str) -> set:
  """Names of every distribution `name` requires, transitively (extras and markers that do not
  apply to this interpreter are skipped)."""
  seen, todo = set(), [name]
  while todo:
    current = todo.pop()
    key = re.sub(r'[-_.]+', '-', current).lower()
    if key in seen:
      continue
    seen.add(key)
    try:
      requirements = importlib.metadata.requires(current) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    for requirement in requirements:
      spec, _, marker = requirement.partition(';')
      if 'extra' in marker:
        continue
      todo.append(re.match(r'[A-Za-z0-9._-]+', spec.strip()).group(0))
  return seen


def test_no_tensorflow_in_the_dependency_tree():
  closure = requirement_closure('score_sde')
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'grain',
          'tensorflow-datasets'} <= closure
  assert not {'tensorflow', 'tensorflow-cpu', 'tensorflow-gpu', 'tf-nightly'} & closure
  with pytest.raises(importlib.metadata.PackageNotFoundError):
    importlib.metadata.distribution('tensorflow')


def test_console_script_points_at_main():
  scripts = importlib.metadata.distribution('score_sde').entry_points.select(
      group='console_scripts')
  assert {ep.name: ep.value for ep in scripts} == {'score-sde': 'score_sde.main:run'}
