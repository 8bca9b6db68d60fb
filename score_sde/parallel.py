"""Data parallelism over every device of every host.

One `Mesh` holds all devices (`jax.devices()`, every process's) along one axis, 'data'. Batches
are split along their batch axis over it; the training state and parameters are replicated. Jitted
functions take and return such global arrays, so XLA inserts the gradient all-reduce and the same
code runs on one CPU, on 8 GPUs, or on many hosts after `initialize_distributed`.

Each process feeds its own rows: a global batch of B rows is B / process_count() rows a process,
B / device_count() rows a device.
"""
import os
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
# Environment variables read when no flag is given (jax.distributed.initialize reads the JAX_*
# ones itself on clusters it can detect: Cloud TPU, SLURM, Open MPI).
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
  """Joins a multi-process run when one is configured; returns whether it did.

  Arguments left None are read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  With no coordinator address at all this is a single-process run and nothing happens. On CPU the
  cross-process collectives use gloo.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
  if not coordinator_address:
    return False
  if num_processes is None and ENV_NUM_PROCESSES in os.environ:
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and ENV_PROCESS_ID in os.environ:
    process_id = int(os.environ[ENV_PROCESS_ID])
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'num_processes = {num_processes} must be a positive integer.')
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f'process_id = {process_id} must lie in [0, {num_processes}).')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def data_mesh() -> Mesh:
  """A 1-D mesh of every device of every process, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Arrays split along `batch_axis` over the mesh."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def per_process_batch(global_batch: int, field: str) -> int:
  """Rows of a global batch that this process feeds. Refuses (ValueError naming `field`) a batch
  that does not split evenly over the devices."""
  devices = jax.device_count()
  if global_batch < 1 or global_batch % devices:
    raise ValueError(f'{field} = {global_batch} must be a positive multiple of the number of '
                     f'devices, {devices} ({jax.process_count()} process(es) x '
                     f'{jax.local_device_count()} local device(s)).')
  return global_batch // jax.process_count()


def global_batch(mesh: Mesh, local_rows, batch_axis: int = 0):
  """The global array whose rows along `batch_axis` are every process's `local_rows` (numpy
  arrays, a pytree of them), in process order, split over the mesh."""
  sharding = batch_sharded(mesh, batch_axis)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_rows)


def replicate(mesh: Mesh, tree):
  """`tree` (equal on every process) as arrays replicated on every device of the mesh."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def to_host(tree):
  """Every leaf as a numpy array holding all of its rows, on every process."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)


def is_primary() -> bool:
  """Whether this process writes the run's files (reports, samples, logs)."""
  return jax.process_index() == 0
