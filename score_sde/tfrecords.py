"""StyleGAN-style TFRecord image files (the official FFHQ / CelebA-HQ data), read without
TensorFlow.

A TFRecord file is a sequence of records: length (uint64, little-endian), the masked CRC-32C of
those 8 bytes (uint32), `length` bytes of data, the masked CRC-32C of the data (uint32). Each
record here is a serialized tf.train.Example protobuf whose features are 'shape' (int64 list
[C, H, W]) and 'data' (one bytes value: the uint8 pixels in C, H, W order). Length CRCs are
checked (a truncated or misaligned file is refused); data CRCs are not (that would read every
image twice in pure Python).
"""
import struct

import numpy as np

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc_table() -> list:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
    table.append(crc)
  return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's CRC: the CRC-32C rotated right by 15 bits plus 0xa282ead8 (mod 2^32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record_spans(path: str) -> list:
  """(offset, length) of every record's data in the file; ValueError for a damaged header."""
  spans = []
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)
      if not header:
        return spans
      if len(header) < 12:
        raise ValueError(f'{path}: truncated record header at byte {f.tell() - len(header)}.')
      (length,), (crc,) = struct.unpack('<Q', header[:8]), struct.unpack('<I', header[8:])
      if crc != masked_crc32c(header[:8]):
        raise ValueError(f'{path}: bad length checksum at byte {f.tell() - 12}; not a TFRecord '
                         'file, or damaged.')
      spans.append((f.tell(), length))
      f.seek(length + 4, 1)


def _varint(buf: bytes, pos: int) -> tuple:
  value, shift = 0, 0
  while True:
    byte = buf[pos]
    value |= (byte & 0x7F) << shift
    pos, shift = pos + 1, shift + 7
    if not byte & 0x80:
      return value, pos


def _fields(buf: bytes):
  """Yields (field number, wire type, value) of a protobuf message: ints for varints, bytes for
  length-delimited fields."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 2:
      size, pos = _varint(buf, pos)
      value, pos = buf[pos:pos + size], pos + size
    elif wire in (1, 5):
      size = 8 if wire == 1 else 4
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f'Unsupported protobuf wire type {wire}.')
    yield number, wire, value


def parse_example(buf: bytes) -> dict:
  """tf.train.Example -> {name: list of bytes (bytes_list) or ints (int64_list)}."""
  features = {}
  for number, _, example_features in _fields(buf):
    if number != 1:
      continue
    for entry_number, _, entry in _fields(example_features):  # map<string, Feature> entries
      if entry_number != 1:
        continue
      name, feature = None, b''
      for field, _, value in _fields(entry):
        if field == 1:
          name = value.decode()
        elif field == 2:
          feature = value
      values = []
      for kind, _, typed_list in _fields(feature):  # 1: bytes_list, 3: int64_list
        for _, wire, value in _fields(typed_list):
          if kind == 1:
            values.append(value)
          elif kind == 3 and wire == 2:  # packed
            pos = 0
            while pos < len(value):
              item, pos = _varint(value, pos)
              values.append(item)
          elif kind == 3:
            values.append(value)
      features[name] = values
  return features


class TFRecordImages:
  """Random access to the images of a StyleGAN TFRecord file: {'image': uint8 (H, W, C)}.
  `select(record indices) -> kept indices` picks a subset (e.g. a split)."""

  def __init__(self, path: str, select=None):
    self.path = path
    spans = record_spans(path)
    kept = np.arange(len(spans)) if select is None else select(np.arange(len(spans)))
    self.spans = [spans[i] for i in kept]

  def __len__(self):
    return len(self.spans)

  def __getitem__(self, index):
    offset, length = self.spans[index]
    with open(self.path, 'rb') as f:
      f.seek(offset)
      features = parse_example(f.read(length))
    channels, height, width = features['shape']
    pixels = np.frombuffer(features['data'][0], np.uint8).reshape(channels, height, width)
    return {'image': pixels.transpose(1, 2, 0)}
