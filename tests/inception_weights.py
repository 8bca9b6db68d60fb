"""Random FID-Inception weights under pytorch-fid's state-dict names, drawn with numpy from a
seed, so that a PyTorch run of pytorch-fid (outside this repo) and our JAX network can be given
the very same weights (tests/data/inception_pytorch_fid.npz holds pytorch-fid's outputs)."""
import numpy as np

from score_sde import inception


def random_state_dict(seed: int = 0) -> dict:
  """{'Mixed_5b.branch1x1.conv.weight': (out, in, kh, kw) float32, ...} in network order."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(prefix, shape):
    kh, kw, cin, cout = shape
    state[f'{prefix}.conv.weight'] = (rng.standard_normal((cout, cin, kh, kw)) *
                                      np.sqrt(2.0 / (cin * kh * kw))).astype(np.float32)
    state[f'{prefix}.bn.weight'] = (1.0 + 0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f'{prefix}.bn.bias'] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f'{prefix}.bn.running_mean'] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    state[f'{prefix}.bn.running_var'] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f'{prefix}.bn.num_batches_tracked'] = np.zeros((), np.int64)

  for name, entry in inception.CONV_SHAPES.items():
    if isinstance(entry, tuple):
      conv(name, entry)
    else:
      for branch, shape in entry.items():
        conv(f'{name}.{branch}', shape)
  state['fc.weight'] = (rng.standard_normal((inception.NUM_CLASSES, 2048)) /
                        np.sqrt(2048.0)).astype(np.float32)
  state['fc.bias'] = (0.01 * rng.standard_normal(inception.NUM_CLASSES)).astype(np.float32)
  return state


def reference_images(seed: int = 1) -> np.ndarray:
  """Two smooth 40 x 48 RGB images in [0, 1] (smooth, so resizing differences stay small)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, (2, 5, 6, 3))
  return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.float32)
