"""Per-sample random streams: sample k of a sampling run draws all its noise from
fold_in(key, k), so it is the same whatever the batch size, its position in a batch, or the
number of devices the batch is split over."""
import jax


def sample_keys(key: jax.Array, first_index, batch_size: int) -> jax.Array:
  """Keys (batch_size,) for samples first_index .. first_index + batch_size - 1."""
  return jax.vmap(lambda k: jax.random.fold_in(key, k))(first_index + jax.numpy.arange(batch_size))


def fold_in_each(keys: jax.Array, data) -> jax.Array:
  """Derives a sub-stream `data` from each per-sample key; keys of shape (B,)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def normal_like(keys: jax.Array, x: jax.Array) -> jax.Array:
  """Standard normal array like x (B, ...); row k drawn from keys[k]."""
  return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
