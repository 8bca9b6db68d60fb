"""Foreign weight files read without their frameworks, and their tensors matched against our
params trees.

  read_torch_file   a `torch.save` zip file (torch >= 1.6; .pth, .pt, .ckpt, .bin), by a pickle
                    reader that builds numpy arrays and runs no pickled code;
  read_legacy_torch_file  a state dict in the legacy torch.save format (torch < 1.6, as
                    torchvision's and lpips' VGG weights are), by the same kind of reader;
  read_safetensors  a .safetensors file (float64 / 32 / 16, bfloat16, integers, bool), each
                    tensor memory-mapped;
  match_params      a tree of arrays checked leaf by leaf against the params shapes of a model,
                    every mismatch reported by path in one ValueError.
"""
import collections
import dataclasses
import json
import os
import pickle
import struct
import zipfile
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_TORCH_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': jnp.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 as numpy: the strided view of `storage`, copied."""
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride) or offset < 0 or min(stride, default=0) < 0:
    raise pickle.UnpicklingError(f'Bad tensor layout: size {size}, stride {stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype.newbyteorder('='))
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise pickle.UnpicklingError(f'Tensor of size {size} runs past its storage')
  view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         [s * storage.itemsize for s in stride])
  return view.astype(storage.dtype.newbyteorder('='))


def _rebuild_parameter(data, *unused):
  return data


class Opaque:
  """Stands for an object of a class that a checkpoint pickled beside its tensors (a training
  callback's state, say): it keeps the arguments and state it was rebuilt with and runs no code.
  Subclassed per pickled global, named after it."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state


class _TensorUnpickler(pickle.Unpickler):
  """Unpickles a torch.save data.pkl into numpy arrays; any global but the few a saved tensor
  needs is refused (or, with `opaque_globals`, replaced by an inert `Opaque` subclass), so
  reading a file can run no code."""

  _GLOBALS = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  }

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str,
               opaque_globals: bool = False):
    super().__init__(file)
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._opaque_globals = opaque_globals
    self._storages = {}

  def find_class(self, module, name):
    if module == 'torch' and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(np.dtype(_TORCH_STORAGE_DTYPES[name]))
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    if self._opaque_globals:
      return type(f'{module}.{name}', (Opaque,), {})
    raise pickle.UnpicklingError(
        f'Refusing to load global {module}.{name}: only tensors, containers and numbers are '
        'read from PyTorch checkpoints.')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and
            isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'Unsupported persistent id {pid!r}')
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      dtype = storage_type.dtype.newbyteorder('<' if self._byteorder == 'little' else '>')
      data = self._archive.read(f'{self._prefix}data/{key}')
      storage = np.frombuffer(data, dtype)
      if storage.size < numel:
        raise pickle.UnpicklingError(f'Storage {key} holds {storage.size} < {numel} elements')
      self._storages[key] = storage
    return self._storages[key]


def read_torch_file(path: str, opaque_globals: bool = False):
  """The object a `torch.save` zip file holds, with tensors as numpy arrays; no torch needed.

  Refuses (ValueError) the legacy pre-1.6 format, and any pickled global other than tensors
  unless `opaque_globals`, which reads such objects as inert `Opaque` placeholders.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} is not a torch.save zip file (torch >= 1.6). Files in the legacy '
                     'format can be re-saved with torch: torch.save(torch.load(f), new_f).')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise ValueError(f'{path} is a zip file but not a torch.save archive (no <name>/data.pkl).')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    byteorder = (archive.read(prefix + 'byteorder').decode().strip()
                 if prefix + 'byteorder' in names else 'little')
    with archive.open(pickles[0]) as f:
      try:
        return _TensorUnpickler(f, archive, prefix, byteorder, opaque_globals).load()
      except Exception as error:  # a malformed pickle raises many types
        raise ValueError(f'{path} could not be read as a PyTorch checkpoint: {error}') from error

_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': jnp.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}


# ---------------------------------------------------------------------------------------------
# The legacy torch.save format (torch < 1.6, and `_use_new_zipfile_serialization=False`): five
# pickles in a row: the magic number, the protocol version 1001, sys_info {'little_endian', ...},
# the object (each storage a persistent id ('storage', torch.<T>Storage, key, location, numel,
# view) with view None or (view key, offset, numel), each tensor a REDUCE of
# torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride, ...)), the sorted list of
# storage keys; then, for each key in that order, the storage's numel (int64) and its bytes, in
# the writer's byte order.

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


@dataclasses.dataclass(frozen=True)
class _LegacyStorage:
  key: str
  dtype: np.dtype
  view: Optional[tuple]  # (offset, numel) in the storage `key`, or None for all of it


@dataclasses.dataclass(frozen=True)
class _LegacyTensor:
  storage: _LegacyStorage
  offset: int
  size: tuple
  stride: tuple


def _legacy_tensor(storage, offset, size, stride, *unused):
  return _LegacyTensor(storage, offset, tuple(size), tuple(stride))


class _LegacyUnpickler(pickle.Unpickler):
  """The object pickle of a legacy file, tensors left as _LegacyTensor records (their bytes
  follow the pickle); any global but those a state dict of tensors needs is refused."""

  _GLOBALS = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor'): _legacy_tensor,
      ('torch._utils', '_rebuild_tensor_v2'): _legacy_tensor,
      ('torch._utils', '_rebuild_parameter'): lambda data, *unused: data,
  }

  def __init__(self, file):
    super().__init__(file, encoding='utf-8')
    self.dtypes = {}  # storage key -> dtype

  def find_class(self, module, name):
    if module == 'torch' and name in _TORCH_STORAGE_DTYPES:
      return np.dtype(_TORCH_STORAGE_DTYPES[name])
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    raise pickle.UnpicklingError(f'Refusing to load global {module}.{name}: only tensors and '
                                 'containers are read from PyTorch files.')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage' and
            isinstance(pid[1], np.dtype)):
      raise pickle.UnpicklingError(f'Unsupported persistent id {pid!r}')
    _, dtype, key, _, _, view = pid
    self.dtypes[key] = dtype
    return _LegacyStorage(key, dtype, None if view is None else (int(view[1]), int(view[2])))


def read_legacy_torch_file(path: str, keep: Callable[[str], bool] = lambda name: True) -> dict:
  """{name: array} of the tensors named by `keep` in a legacy torch.save file holding a flat
  state dict; only the storages those tensors use are read. ValueError for other files."""
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
      if magic != _LEGACY_MAGIC:
        raise ValueError('no torch magic number')
      protocol, sys_info = pickle.load(f), pickle.load(f)
      if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f'protocol version {protocol}')
      unpickler = _LegacyUnpickler(f)
      state = unpickler.load()
      keys = pickle.load(f)
      order = '<' if sys_info.get('little_endian', True) else '>'
    except Exception as error:  # a malformed pickle raises many types
      raise ValueError(f'{path} is neither a torch.save zip file nor a legacy torch.save file '
                       f'({error}).') from error
    if not isinstance(state, dict):
      raise ValueError(f'{path} holds a {type(state).__name__}, not a state dict.')
    tensors = {name: value for name, value in state.items()
               if keep(name) and isinstance(value, _LegacyTensor)}
    needed = {tensor.storage.key for tensor in tensors.values()}
    storages = {}
    for key in keys:
      head = f.read(8)
      if len(head) != 8 or key not in unpickler.dtypes:
        raise ValueError(f'{path}: storage {key} is missing or truncated.')
      dtype = unpickler.dtypes[key].newbyteorder(order)
      nbytes = struct.unpack(order + 'q', head)[0] * dtype.itemsize
      if key in needed:
        data = f.read(nbytes)
        if len(data) != nbytes:
          raise ValueError(f'{path}: storage {key} is truncated.')
        storages[key] = np.frombuffer(data, dtype)
      else:
        f.seek(nbytes, os.SEEK_CUR)
  result = {}
  for name, tensor in tensors.items():
    storage = storages[tensor.storage.key]
    if tensor.storage.view is not None:
      offset, numel = tensor.storage.view
      storage = storage[offset:offset + numel]
    try:
      result[name] = _rebuild_tensor(storage, tensor.offset, tensor.size,
                                                  tensor.stride)
    except pickle.UnpicklingError as error:
      raise ValueError(f'{path}: tensor {name}: {error}') from None
  return result


def read_safetensors(path: str) -> dict:
  """{name: array} of a .safetensors file: an 8-byte little-endian header length n, n bytes of
  JSON {name: {dtype, shape, data_offsets: [begin, end]}, '__metadata__': {...}}, then the
  little-endian tensor bytes. Arrays are read-only memory maps of the file. ValueError for a file
  that is not safetensors or holds a dtype other than those of _SAFETENSORS_DTYPES."""
  with open(path, 'rb') as f:
    head = f.read(8)
    size = struct.unpack('<Q', head)[0] if len(head) == 8 else -1
    try:
      if not 0 < size < 100_000_000:
        raise ValueError(f'header length {size}')
      header = json.loads(f.read(size))
    except ValueError as error:
      raise ValueError(f'{path} is not a safetensors file ({error}).') from error
  start = 8 + size
  tensors = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {name} has dtype {entry["dtype"]}; readable dtypes: '
                       f'{sorted(_SAFETENSORS_DTYPES)}.')
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry['dtype']])
    begin, end = entry['data_offsets']
    shape = tuple(entry['shape'])
    if end - begin != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(f'{path}: tensor {name} of shape {shape} has {end - begin} bytes.')
    if end == begin:
      tensors[name] = np.zeros(shape, dtype)
    else:
      tensors[name] = np.memmap(path, dtype.newbyteorder('<'), 'r', start + begin, shape)
  return tensors


def _is_group_norm_leaf(path: str) -> bool:
  """A GroupNorm scale or bias of the official models (flax before 0.4 stored them 4-D)."""
  parts = path.split('/')
  return len(parts) >= 2 and parts[-2].startswith('GroupNorm_') and parts[-1] in ('scale', 'bias')


def match_params(tree: dict, shapes: dict, what: str, origins: Optional[dict] = None,
                 notes: tuple = ()) -> dict:
  """`tree` as our params: nested dicts of arrays, every leaf checked against `shapes`.

  Leaves are cast to the model's dtypes; GroupNorm scales and biases stored as (1, 1, 1, C) (flax
  before 0.4) become (C,). Raises ValueError naming `what` and listing every missing, unexpected
  and wrongly shaped leaf by path (with its origin in the file from `origins`, path -> str), after
  the lines in `notes`.
  """
  stored = traverse_util.flatten_dict(tree, sep='/')
  expected = traverse_util.flatten_dict(shapes, sep='/')
  origins = origins or {}

  def where(path):
    return f' (from {origins[path]})' if path in origins else ''

  problems = list(notes)
  result = {}
  for path in sorted(expected.keys() | stored.keys()):
    if path not in stored:
      problems.append(f'missing {path}, shape {tuple(expected[path].shape)}')
      continue
    value = np.asarray(stored[path])
    if path not in expected:
      problems.append(f'unexpected {path}{where(path)}, shape {value.shape}')
      continue
    shape = tuple(expected[path].shape)
    if (value.shape != shape and _is_group_norm_leaf(path) and len(shape) == 1 and
        value.shape == (1, 1, 1) + shape):
      value = value.reshape(shape)
    if value.shape != shape:
      problems.append(f'wrong shape {path}{where(path)}: stored {value.shape}, model {shape}')
      continue
    result[path] = value.astype(expected[path].dtype)
  if problems:
    raise ValueError(f'{what} does not fit the params of the config\'s model '
                     f'({len(problems)} problems):\n  ' + '\n  '.join(problems))
  return traverse_util.unflatten_dict(result, sep='/')
