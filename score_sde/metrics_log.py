"""Scalar metrics of a run, written both to `metrics.jsonl` (one JSON object a line:
{"step": int, name: float, ...}) and to TensorBoard event files under `tensorboard/`."""
import json
import os

import tensorboardX


class MetricsLog:

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(directory, 'metrics.jsonl')
    self._file = open(self.path, 'a')
    self._writer = tensorboardX.SummaryWriter(os.path.join(directory, 'tensorboard'))

  def write(self, step: int, **scalars: float) -> None:
    self._file.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}))
    self._file.write('\n')
    self._file.flush()
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    self._file.close()
    self._writer.close()


def read(path: str) -> list:
  """The records of a metrics.jsonl file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
