"""Trains tests.helpers.tiny_config in a separate process, for the multi-device, multi-process
and kill-and-resume tests:

  python -m tests.train_worker WORKDIR N_ITERS OUT.npz [COORDINATOR NUM_PROCESSES PROCESS_ID]
      [--override field=value ...]

Writes the final parameters, EMA and step to OUT.npz, and the devices and shardings it used.
"""
import ast
import sys

import numpy as np


def main(argv):
  workdir, n_iters, out = argv[1], int(argv[2]), argv[3]
  rest = argv[4:]
  overrides = rest[rest.index('--override') + 1:] if '--override' in rest else []
  process = rest[:rest.index('--override')] if '--override' in rest else rest
  from score_sde import parallel
  if process:
    parallel.initialize_distributed(process[0], int(process[1]), int(process[2]))
  import jax

  from score_sde import train
  from tests.helpers import tiny_config

  config = tiny_config()
  config.training.n_iters = n_iters
  for item in overrides:
    field, value = item.split('=')
    section, name = field.split('.')
    config[section][name] = ast.literal_eval(value)
  state = train.train(config, workdir)
  flat = {jax.tree_util.keystr(path): np.asarray(parallel.to_host(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(
              {'params': state.params, 'params_ema': state.params_ema})}
  np.savez(out, step=int(state.step), devices=jax.device_count(),
           processes=jax.process_count(),
           params_replicated=all(leaf.sharding.is_fully_replicated
                                 for leaf in jax.tree.leaves(state.params)), **flat)


if __name__ == '__main__':
  main(sys.argv)
