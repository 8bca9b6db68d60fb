"""Writes files in the `torch.save` zip format (torch >= 1.6) without torch, for tests.

The layout torch writes: a zip of <name>/data.pkl (pickle protocol 2; each tensor a REDUCE of
torch._utils._rebuild_tensor_v2 over a persistent-id storage ('storage', torch.<T>Storage, key,
'cpu', numel)), <name>/data/<key> (the raw little-endian storage bytes), <name>/byteorder and
<name>/version. The pickle opcodes are emitted by hand, because pickling a reference to a torch
function would import torch.
"""
import collections
import dataclasses
import io
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float64): 'DoubleStorage', np.dtype(np.float32): 'FloatStorage',
    np.dtype(np.float16): 'HalfStorage', np.dtype(np.int64): 'LongStorage',
    np.dtype(np.int32): 'IntStorage', np.dtype(np.uint8): 'ByteStorage',
    np.dtype(np.bool_): 'BoolStorage',
}


@dataclasses.dataclass(frozen=True)
class TensorView:
  """A tensor stored as a view of `storage` (1-D): element [i] is storage[offset + i . stride]."""

  storage: np.ndarray
  offset: int
  size: tuple
  stride: tuple


class _Emitter:
  """Pickle opcodes for dicts, OrderedDicts, lists, tuples, str, int, float, bool, None and
  tensors (numpy arrays or TensorViews)."""

  def __init__(self):
    self.out = io.BytesIO()
    self.storages = {}  # id(array) -> (key, array)

  def global_(self, module: str, name: str):
    self.out.write(pickle.GLOBAL + f'{module}\n{name}\n'.encode())

  def items(self, pairs):
    self.out.write(pickle.MARK)
    for key, value in pairs:
      self.emit(key)
      self.emit(value)
    self.out.write(pickle.SETITEMS)

  def tensor(self, view: TensorView):
    storage = view.storage
    if id(storage) not in self.storages:
      self.storages[id(storage)] = (str(len(self.storages)), storage)
    key = self.storages[id(storage)][0]
    self.global_('torch._utils', '_rebuild_tensor_v2')
    self.out.write(pickle.MARK)
    self.out.write(pickle.MARK)
    self.emit('storage')
    self.global_('torch', _STORAGE_NAMES[storage.dtype])
    for part in (key, 'cpu', storage.size):
      self.emit(part)
    self.out.write(pickle.TUPLE + pickle.BINPERSID)
    for part in (view.offset, tuple(view.size), tuple(view.stride), False,
                 collections.OrderedDict()):
      self.emit(part)
    self.out.write(pickle.TUPLE + pickle.REDUCE)

  def emit(self, obj):
    out = self.out
    if obj is None:
      out.write(pickle.NONE)
    elif isinstance(obj, bool):
      out.write(pickle.NEWTRUE if obj else pickle.NEWFALSE)
    elif isinstance(obj, int):
      out.write(pickle.LONG1 + bytes([8]) + obj.to_bytes(8, 'little', signed=True))
    elif isinstance(obj, float):
      out.write(pickle.BINFLOAT + struct.pack('>d', obj))
    elif isinstance(obj, str):
      data = obj.encode()
      out.write(pickle.BINUNICODE + struct.pack('<I', len(data)) + data)
    elif isinstance(obj, tuple):
      out.write(pickle.MARK)
      for item in obj:
        self.emit(item)
      out.write(pickle.TUPLE)
    elif isinstance(obj, list):
      out.write(pickle.EMPTY_LIST + pickle.MARK)
      for item in obj:
        self.emit(item)
      out.write(pickle.APPENDS)
    elif isinstance(obj, collections.OrderedDict):
      self.global_('collections', 'OrderedDict')
      out.write(pickle.EMPTY_TUPLE + pickle.REDUCE)
      self.items(obj.items())
    elif isinstance(obj, dict):
      out.write(pickle.EMPTY_DICT)
      self.items(obj.items())
    elif isinstance(obj, TensorView):
      self.tensor(obj)
    elif isinstance(obj, (np.ndarray, np.generic)):
      array = np.array(obj, order='C')  # keeps 0-d tensors 0-d
      strides = tuple(s // array.itemsize for s in array.strides)
      self.tensor(TensorView(array.reshape(-1), 0, array.shape, strides))
    else:
      raise TypeError(f'Cannot write {type(obj).__name__}')


def save(obj, path: str, name: str = 'archive') -> None:
  """Writes `obj` to `path` as torch.save would (numpy arrays as CPU tensors)."""
  emitter = _Emitter()
  emitter.out.write(pickle.PROTO + bytes([2]))
  emitter.emit(obj)
  emitter.out.write(pickle.STOP)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
    archive.writestr(f'{name}/data.pkl', emitter.out.getvalue())
    archive.writestr(f'{name}/byteorder', 'little')
    for key, storage in emitter.storages.values():
      little = storage.astype(storage.dtype.newbyteorder('<'))
      archive.writestr(f'{name}/data/{key}', little.tobytes())
    archive.writestr(f'{name}/version', '3\n')
