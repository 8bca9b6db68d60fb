"""Foreign weight files: safetensors written byte by byte from the format's specification, and
the torch reader's inert placeholders for pickled objects it does not load."""
import json
import pickle
import struct
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from score_sde import tensor_files


def write_safetensors(path, tensors: dict, codes: dict):
  """The format: u64 little-endian header size, the JSON header, then the tensors' bytes."""
  header, blobs, offset = {'__metadata__': {'format': 'np'}}, [], 0
  for name, value in tensors.items():
    data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': codes[name], 'shape': list(value.shape),
                    'data_offsets': [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  encoded = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)) + encoded + b''.join(blobs))


def test_safetensors_dtypes_shapes_and_offsets(tmp_path):
  tensors = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
             'b': np.array([1.5, -2.25], np.float16),
             'c': np.array([[0.5, 3.0]], jnp.bfloat16),
             'd': np.array([7, -9], np.int64), 'e': np.zeros((0, 4), np.float32)}
  codes = {'a': 'F32', 'b': 'F16', 'c': 'BF16', 'd': 'I64', 'e': 'F32'}
  path = str(tmp_path / 'w.safetensors')
  write_safetensors(path, tensors, codes)
  read = tensor_files.read_safetensors(path)
  assert sorted(read) == sorted(tensors)
  for name, value in tensors.items():
    assert read[name].dtype == value.dtype and read[name].shape == value.shape
    np.testing.assert_array_equal(np.asarray(read[name], np.float64),
                                  np.asarray(value, np.float64))


def test_safetensors_errors(tmp_path):
  bad = tmp_path / 'bad.safetensors'
  bad.write_bytes(b'\x05\x00\x00\x00\x00\x00\x00\x00nope!')
  with pytest.raises(ValueError, match='is not a safetensors file'):
    tensor_files.read_safetensors(str(bad))
  path = str(tmp_path / 'f8.safetensors')
  write_safetensors(path, {'x': np.zeros(2, np.uint8)}, {'x': 'F8_E4M3'})
  with pytest.raises(ValueError, match='tensor x has dtype F8_E4M3; readable dtypes'):
    tensor_files.read_safetensors(path)


def test_unknown_pickled_objects_become_inert_placeholders(tmp_path):
  # {'callback': pytorch_lightning.Callback(...) with state, 'step': 3}, hand-pickled: with
  # opaque_globals the class is never imported or run, only recorded.
  path = str(tmp_path / 'lightning.ckpt')
  payload = (pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + pickle.MARK +
             pickle.BINUNICODE + struct.pack('<I', 8) + b'callback' +
             b'cpytorch_lightning.callbacks\nModelCheckpoint\n' + pickle.EMPTY_TUPLE +
             pickle.NEWOBJ + pickle.EMPTY_DICT + pickle.BINUNICODE + struct.pack('<I', 4) +
             b'best' + pickle.BININT1 + b'\x07' + pickle.SETITEM + pickle.BUILD +
             pickle.BINUNICODE + struct.pack('<I', 4) + b'step' + pickle.BININT1 + b'\x03' +
             pickle.SETITEMS + pickle.STOP)
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', payload)
  with pytest.raises(ValueError, match='Refusing to load global pytorch_lightning'):
    tensor_files.read_torch_file(path)
  read = tensor_files.read_torch_file(path, opaque_globals=True)
  assert read['step'] == 3
  assert isinstance(read['callback'], tensor_files.Opaque)
  assert type(read['callback']).__name__ == 'pytorch_lightning.callbacks.ModelCheckpoint'
  assert read['callback'].state == {'best': 7}
