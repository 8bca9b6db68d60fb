"""StyleGAN TFRecords without TensorFlow: the records are real tf.train.Example protobufs,
serialized by the protobuf library from a schema declared here (tensorflow/core/example/
feature.proto's message layout)."""
import os
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from score_sde import datasets, image_datasets, tfrecords
from configs import default_cifar10_configs


def example_class():
  """tf.train.Example, declared field by field as in tensorflow's feature.proto/example.proto."""
  T = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name='example_for_test.proto', package='tftest')

  def message(name, *fields, nested=()):
    m = proto.message_type.add(name=name) if not nested else nested[0].nested_type.add(name=name)
    for number, field_name, kind, label, type_name in fields:
      f = m.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        f.type_name = type_name
    return m

  message('BytesList', (1, 'value', T.TYPE_BYTES, T.LABEL_REPEATED, None))
  message('FloatList', (1, 'value', T.TYPE_FLOAT, T.LABEL_REPEATED, None))
  int64_list = message('Int64List', (1, 'value', T.TYPE_INT64, T.LABEL_REPEATED, None))
  int64_list.field[0].options.packed = True
  feature = message('Feature',
                    (1, 'bytes_list', T.TYPE_MESSAGE, T.LABEL_OPTIONAL, '.tftest.BytesList'),
                    (2, 'float_list', T.TYPE_MESSAGE, T.LABEL_OPTIONAL, '.tftest.FloatList'),
                    (3, 'int64_list', T.TYPE_MESSAGE, T.LABEL_OPTIONAL, '.tftest.Int64List'))
  feature.oneof_decl.add(name='kind')
  for f in feature.field:
    f.oneof_index = 0
  features = message('Features', (1, 'feature', T.TYPE_MESSAGE, T.LABEL_REPEATED,
                                  '.tftest.Features.FeatureEntry'))
  entry = message('FeatureEntry', (1, 'key', T.TYPE_STRING, T.LABEL_OPTIONAL, None),
                  (2, 'value', T.TYPE_MESSAGE, T.LABEL_OPTIONAL, '.tftest.Feature'),
                  nested=(features,))
  entry.options.map_entry = True
  message('Example', (1, 'features', T.TYPE_MESSAGE, T.LABEL_OPTIONAL, '.tftest.Features'))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName('tftest.Example'))


def write_tfrecord(path, images):
  Example = example_class()
  with open(path, 'wb') as f:
    for image in images:
      example = Example()
      example.features.feature['shape'].int64_list.value.extend(image.transpose(2, 0, 1).shape)
      example.features.feature['data'].bytes_list.value.append(image.transpose(2, 0, 1).tobytes())
      data = example.SerializeToString()
      length = struct.pack('<Q', len(data))
      f.write(length + struct.pack('<I', tfrecords.masked_crc32c(length)) + data +
              struct.pack('<I', tfrecords.masked_crc32c(data)))


def test_crc32c_check_value():
  assert tfrecords.crc32c(b'123456789') == 0xE3069283  # the standard CRC-32C check value


def test_stylegan_tfrecords_are_read_as_images(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (12, 6, 10, 3), dtype=np.uint8)
  path = str(tmp_path / 'ffhq-r03.tfrecords')
  write_tfrecord(path, images)
  source = tfrecords.TFRecordImages(path)
  assert len(source) == 12
  for i in (0, 7, 11):
    np.testing.assert_array_equal(source[i]['image'], images[i])
  config = default_cifar10_configs.get_default_configs()
  config.data.update(dataset='FFHQ', tfrecords_path=path, image_size=6, random_flip=False,
                     uniform_dequantization=False)
  test = list(datasets.get_dataset(config, 'test', 4, evaluation=True))
  assert int(test[0]['mask'].sum()) == 1  # image 9 is held out
  np.testing.assert_array_equal(test[0]['x'][0] * 255, images[9][:, 2:8])
  assert datasets.num_examples(config, 'train') == 11
  with open(path, 'r+b') as f:  # damage the second record's length (12 equal records)
    f.seek(os.path.getsize(path) // 12 + 1)
    f.write(b'\xff')
  with pytest.raises(ValueError, match='bad length checksum|truncated'):
    image_datasets.open_source(config, 'train')
