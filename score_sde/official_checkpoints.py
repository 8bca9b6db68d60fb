"""Import of the checkpoints released with the official score_sde code (Song et al. 2021).

Two formats, both mapped onto the params tree of the model that a config builds here:

  jax    a flax msgpack file `checkpoint_<n>` written by the official JAX code: the training
         State {step, optimizer: {target, state: {step, param_states}}, lr, model_state, ema_rate,
         params_ema, rng}; `target` holds the raw parameters and `param_states` mirrors them with
         Adam's {grad_ema, grad_sq_ema} at every leaf.
  torch  a `torch.save` zip file (torch >= 1.6) written by the official PyTorch port
         (score_sde_pytorch, models 'ncsnpp' and 'ddpm'): {model: state_dict, ema: {decay,
         num_updates, shadow_params}, optimizer: Adam state_dict, step}. Read without torch, by a
         pickle reader that admits tensors and nothing else.

Every stored leaf is checked against the model's params tree (path and shape); all mismatches are
reported together, by path, in one ValueError. `convert_to_workdir` turns either file into an
orbax checkpoint that `score_sde.train.train` resumes from.
"""
import dataclasses
import os
import zipfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from score_sde import checkpoints, config_checks, datasets, methods, train, workdir
from score_sde.tensor_files import match_params, read_torch_file
from score_sde import models as models_lib

FORMATS = ('jax', 'torch')
TORCH_MODELS = ('ncsnpp', 'ddpm')  # the models whose PyTorch port keeps one `all_modules` list
PARAMETER_SETS = ('ema', 'raw')


@dataclasses.dataclass(frozen=True)
class AdamMoments:
  """Adam's first and second moment estimates (params-shaped trees) after `count` updates."""

  count: int
  mu: dict
  nu: dict


@dataclasses.dataclass(frozen=True)
class OfficialCheckpoint:
  """An official checkpoint in our params tree (nested dicts of numpy arrays).

  params: the trained (raw) parameters; params_ema: their exponential moving average, or None if
  the file has none; adam: the optimizer's moments, or None; step: training steps done (0 if a
  PyTorch file has none).
  """

  params: dict
  params_ema: Optional[dict]
  adam: Optional[AdamMoments]
  step: int


# ---------------------------------------------------------------------------------------------
# The model's params tree, and matching a stored tree against it.


def model_params_layout(config, data_shape: Optional[tuple] = None) -> tuple:
  """(shapes, order) of the params of the model `config` builds, computed without any FLOPs.

  shapes: the params tree with jax.ShapeDtypeStruct leaves. order: its top-level module names in
  creation order, which is the order of the PyTorch port's `all_modules` list. data_shape (one
  example, e.g. (H, W, C)) defaults to that of config.data.
  """
  data_shape = datasets.data_shape(config) if data_shape is None else data_shape
  order = []

  def init(key):
    params = models_lib.init_model(key, config, data_shape)[1]['params']
    order.extend(params)  # flax's dicts keep creation order; eval_shape returns them sorted
    return params

  return jax.eval_shape(init, jax.random.PRNGKey(0)), order


# ---------------------------------------------------------------------------------------------
# The official JAX format.

_JAX_STATE_FIELDS = ('step', 'optimizer', 'params_ema')


def read_jax_state(path: str) -> dict:
  """The state dict of an official JAX checkpoint file (nested dicts of numpy arrays)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    state = serialization.msgpack_restore(data)
  except Exception as error:  # msgpack raises several types for malformed input
    raise ValueError(f'{path} is not a flax msgpack checkpoint: {error}') from error
  missing = [k for k in _JAX_STATE_FIELDS if not isinstance(state, dict) or k not in state]
  if missing or not isinstance(state['optimizer'], dict) or 'target' not in state['optimizer']:
    raise ValueError(f'{path} is not an official score_sde JAX checkpoint: it lacks '
                     f'{missing or ["optimizer.target"]} of the training State '
                     f'{{step, optimizer: {{target, state}}, params_ema, ...}}.')
  return state


def _split_moments(param_states: dict) -> tuple:
  """flax.optim Adam's param_states ({path: {grad_ema, grad_sq_ema}}) -> (mu, nu) trees."""
  moments = {'grad_ema': {}, 'grad_sq_ema': {}}
  for path, value in traverse_util.flatten_dict(param_states, sep='/').items():
    head, _, leaf = path.rpartition('/')
    if leaf in moments:
      moments[leaf][head] = value
    else:
      moments['grad_ema'][path] = value  # reported as unexpected
  return tuple(traverse_util.unflatten_dict(m, sep='/') for m in moments.values())


def jax_state_to_checkpoint(state: dict, shapes: dict) -> OfficialCheckpoint:
  """Maps an official JAX state dict onto the params tree `shapes`."""
  optimizer = state['optimizer']
  params = match_params(optimizer['target'], shapes, 'optimizer.target')
  params_ema = match_params(state['params_ema'], shapes, 'params_ema')
  model_state = traverse_util.flatten_dict(dict(state.get('model_state') or {}), sep='/')
  if model_state:
    raise ValueError(f'model_state holds {sorted(model_state)}; the models here keep no '
                     'variables besides params.')
  adam = None
  opt_state = optimizer.get('state') or {}
  if opt_state.get('param_states'):
    mu, nu = _split_moments(opt_state['param_states'])
    adam = AdamMoments(count=int(np.asarray(opt_state['step'])),
                       mu=match_params(mu, shapes, 'optimizer.state.param_states (grad_ema)'),
                       nu=match_params(nu, shapes, 'optimizer.state.param_states (grad_sq_ema)'))
  return OfficialCheckpoint(params, params_ema, adam, int(np.asarray(state['step'])))


# ---------------------------------------------------------------------------------------------
# The official PyTorch format.

_TORCH_BUFFERS = ('sigmas',)  # registered buffers of NCSNpp and DDPM (not parameters)
_FIXED_MODULES = ('GaussianFourierProjection_',)  # their parameters have requires_grad=False


def _torch_leaf(module: list, name: str, value: np.ndarray) -> tuple:
  """(our leaf name, value in our layout) of the PyTorch parameter `name` of our `module` path.

  nn.Conv2d and nn.Linear store (out, in, ...) weights; flax (..., in, out) kernels. The
  StyleGAN2 up/down-sampling Conv2d is named `weight` on both sides.
  """
  if name == 'weight' and value.ndim == 4:  # Conv2d (O, I, kh, kw) -> (kh, kw, I, O)
    ours = 'weight' if module and module[-1].startswith('Conv2d_') else 'kernel'
    return ours, value.transpose(2, 3, 1, 0)
  if name == 'weight' and value.ndim == 2:  # Linear (O, I) -> Dense kernel (I, O)
    return 'kernel', value.T
  if name == 'weight' and value.ndim == 1:  # GroupNorm
    return 'scale', value
  return name, value  # biases, NIN W (in, out) and b, the Fourier W: the same layout


def _torch_paths(keys: list, order: list) -> tuple:
  """({PyTorch key: our module path}, notes): `all_modules.<i>` -> our top-level module.

  The k-th all_modules entry with parameters is our k-th top-level module with parameters (both
  models create their modules in the order of the forward pass).
  """
  indices = sorted({int(k.split('.')[1]) for k in keys
                    if k.startswith('all_modules.') and k.split('.')[1].isdigit()})
  notes = ()
  if len(indices) != len(order):
    notes = (f'the file\'s all_modules has {len(indices)} modules with parameters, the model '
             f'{len(order)}; the config does not describe the checkpoint\'s network',)
  top = {i: name for i, name in zip(indices, order)}
  paths = {}
  for key in keys:
    parts = key.split('.')
    if parts[0] == 'all_modules' and len(parts) > 2 and parts[1].isdigit():
      paths[key] = [top.get(int(parts[1]), f'all_modules.{parts[1]}'), *parts[2:-1]]
    else:
      paths[key] = parts[:-1]
  return paths, notes


def _torch_tree(tensors: dict, paths: dict, origins: dict) -> tuple:
  """(our nested tree, {our path: origin}) of PyTorch tensors {key: array}."""
  flat, where = {}, {}
  for key, value in tensors.items():
    leaf, value = _torch_leaf(paths[key], key.split('.')[-1], np.asarray(value))
    path = '/'.join([*paths[key], leaf])
    flat[path], where[path] = value, origins.get(key, key)
  return traverse_util.unflatten_dict(flat, sep='/'), where


def torch_state_to_checkpoint(saved, shapes: dict, order: list) -> OfficialCheckpoint:
  """Maps a score_sde_pytorch checkpoint (as read by `read_torch_file`) onto `shapes`."""
  if not isinstance(saved, dict) or not isinstance(saved.get('model'), dict):
    raise ValueError('Not a score_sde_pytorch checkpoint: expected a dict with a `model` '
                     'state_dict (and `ema`, `optimizer`, `step`).')
  model = {k[len('module.'):] if k.startswith('module.') else k: v
           for k, v in saved['model'].items()}
  param_keys = [k for k in model if k not in _TORCH_BUFFERS]  # model.parameters() order
  paths, notes = _torch_paths(param_keys, order)
  trainable = [k for k in param_keys if not (paths[k] and paths[k][0].startswith(_FIXED_MODULES))]

  def mapped(tensors, what, origins=None):
    tree, where = _torch_tree(tensors, paths, origins or {})
    return match_params(tree, shapes, what, where, notes)

  params = mapped({k: model[k] for k in param_keys}, 'model (PyTorch state_dict)')
  params_ema = None
  if saved.get('ema') is not None:
    shadow = list(saved['ema']['shadow_params'])
    if len(shadow) != len(trainable):
      raise ValueError(f'ema.shadow_params holds {len(shadow)} tensors but the state_dict has '
                       f'{len(trainable)} trainable parameters.')
    ema = {k: model[k] for k in param_keys}
    ema.update(zip(trainable, shadow))
    params_ema = mapped(ema, 'ema.shadow_params',
                        {k: f'ema.shadow_params[{i}] ~ {k}' for i, k in enumerate(trainable)})
  adam = _torch_adam(saved.get('optimizer'), model, param_keys, mapped)
  return OfficialCheckpoint(params, params_ema, adam, int(np.asarray(saved.get('step', 0))))


def _torch_adam(optimizer, model: dict, param_keys: list, mapped) -> Optional[AdamMoments]:
  """The moments of a torch.optim.Adam state_dict over model.parameters(), or None if empty."""
  if not optimizer or not optimizer.get('state'):
    return None
  ids = [i for group in optimizer['param_groups'] for i in group['params']]
  if len(ids) != len(param_keys):
    raise ValueError(f'The optimizer state covers {len(ids)} parameters, the state_dict has '
                     f'{len(param_keys)}.')
  key_of = dict(zip(ids, param_keys))
  # Parameters never updated (the fixed Fourier W) have no state: zero moments.
  mu = {k: np.zeros_like(model[k]) for k in param_keys}
  nu = {k: np.zeros_like(model[k]) for k in param_keys}
  counts = set()
  for i, entry in optimizer['state'].items():
    if i not in key_of:
      raise ValueError(f'The optimizer state has an entry for parameter {i}, which no '
                       'param_group lists.')
    mu[key_of[i]], nu[key_of[i]] = entry['exp_avg'], entry['exp_avg_sq']
    counts.add(int(np.asarray(entry['step'])))
  if len(counts) != 1:
    raise ValueError(f'The optimizer state mixes step counts {sorted(counts)}.')
  return AdamMoments(counts.pop(), mapped(mu, 'optimizer exp_avg'),
                     mapped(nu, 'optimizer exp_avg_sq'))


# ---------------------------------------------------------------------------------------------
# Entry points.


def detect_format(path: str) -> str:
  """'torch' for a zip file, 'jax' otherwise; ValueError for a legacy (pre-1.6) torch file."""
  if zipfile.is_zipfile(path):
    return 'torch'
  with open(path, 'rb') as f:
    head = f.read(2)
  if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
    raise ValueError(f'{path} is a legacy (pre-1.6) PyTorch file, which is not read. Re-save it '
                     'with torch: torch.save(torch.load(f), new_f).')
  return 'jax'


def read_checkpoint(path: str, config, fmt: Optional[str] = None,
                    data_shape: Optional[tuple] = None) -> OfficialCheckpoint:
  """The official checkpoint at `path` (format `fmt`, detected if None) in the params tree of
  the model `config` builds (for examples of `data_shape`, by default config.data's);
  ValueError listing every mismatch by path."""
  fmt = detect_format(path) if fmt is None else fmt
  if fmt not in FORMATS:
    raise ValueError(f'Checkpoint format {fmt!r} is not supported; allowed: {list(FORMATS)}.')
  name = config_checks.get(config, 'model.name')
  if fmt == 'torch' and name not in TORCH_MODELS:
    raise ValueError(f'PyTorch checkpoints are read for models {list(TORCH_MODELS)} only '
                     f'(config.model.name = {name!r}).')
  shapes, order = model_params_layout(config, data_shape)
  if fmt == 'jax':
    return jax_state_to_checkpoint(read_jax_state(path), shapes)
  return torch_state_to_checkpoint(read_torch_file(path), shapes, order)


def _chosen_params(checkpoint: OfficialCheckpoint, use: str) -> dict:
  if use not in PARAMETER_SETS:
    raise ValueError(f'use = {use!r} is not supported; allowed: {list(PARAMETER_SETS)}.')
  if use == 'raw':
    return checkpoint.params
  if checkpoint.params_ema is None:
    raise ValueError("The checkpoint holds no EMA parameters; use 'raw'.")
  return checkpoint.params_ema


def load_variables(path: str, config, fmt: Optional[str] = None, use: str = 'ema',
                   data_shape: Optional[tuple] = None) -> tuple:
  """(variables, step): {'params': ...} for `model.apply`, from the EMA parameters (use='ema',
  what the paper samples with) or the raw ones (use='raw'); see `read_checkpoint`."""
  checkpoint = read_checkpoint(path, config, fmt, data_shape)
  params = jax.tree.map(jnp.asarray, _chosen_params(checkpoint, use))
  return {'params': params}, checkpoint.step


def _cast_like(tree, like):
  """`tree` as jax arrays with the dtypes of the same-structured `like`."""
  return jax.tree.map(lambda x, y: jnp.asarray(x, y.dtype), tree, like)


def _with_adam(opt_state, adam: AdamMoments):
  """`opt_state` of our optimizer with its Adam moments and step counts set from `adam`."""
  kinds = (optax.ScaleByAdamState, optax.ScaleByScheduleState)
  found = []

  def fill(node):
    if isinstance(node, optax.ScaleByAdamState):
      found.append(node)
      return node._replace(count=jnp.asarray(adam.count, node.count.dtype),
                           mu=_cast_like(adam.mu, node.mu), nu=_cast_like(adam.nu, node.nu))
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=jnp.asarray(adam.count, node.count.dtype))
    return node

  state = jax.tree.map(fill, opt_state, is_leaf=lambda n: isinstance(n, kinds))
  if len(found) != 1:
    raise ValueError(f'Expected one Adam state in the optimizer state, found {len(found)}.')
  return state


def convert_to_workdir(config, path: str, workdir_path: str, fmt: Optional[str] = None,
                       use: str = 'ema') -> int:
  """Writes the official checkpoint at `path` as an orbax checkpoint in workdir/checkpoints, at
  the official step, so that `train.train(config, workdir_path)` resumes from it. Returns the step.

  The TrainState gets params = the raw parameters (training continues from them), params_ema =
  the EMA (use='ema'; an error if the file has none) or a copy of the raw ones (use='raw', as a
  fresh run starts), the official Adam moments and count when the file has them (else a fresh
  optimizer state), and the run's own rng key from config.seed. The data iterator starts afresh.
  Refuses (ValueError) a workdir that already holds this step or a later one, or another config.
  """
  experiment = methods.build_experiment(config)
  checkpoint = read_checkpoint(path, config, fmt)
  params_ema = _chosen_params(checkpoint, use)
  store = checkpoints.CheckpointStore(os.path.join(workdir_path, 'checkpoints'))
  try:
    later = [s for s in store.steps() if s >= checkpoint.step]
    if later:
      raise ValueError(f'{store.directory} already holds step(s) {later}, at or after the '
                       f'imported step {checkpoint.step}. Use a new workdir; nothing was changed.')
    workdir.check_or_record_config(config, workdir_path, has_checkpoints=bool(store.steps()))
    initial = experiment.initial_state
    opt_state = (initial.opt_state if checkpoint.adam is None
                 else _with_adam(initial.opt_state, checkpoint.adam))
    state = initial.replace(step=jnp.asarray(checkpoint.step, initial.step.dtype),
                            params=_cast_like(checkpoint.params, initial.params),
                            params_ema=_cast_like(params_ema, initial.params),
                            opt_state=opt_state)
    store.save(checkpoint.step, state, train.data_state(*train.data_iterators(config)))
    store.wait()
  finally:
    store.close()
  return checkpoint.step
