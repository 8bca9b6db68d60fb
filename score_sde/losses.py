"""Score-matching and flow-matching losses, the optimizer, and the train / eval step factories.

The loss functions return per-example losses (B,); training minimises their batch mean.
`reduce_mean` averages the squared error over data dimensions, otherwise it is summed and halved
(the official convention). Class-conditional models (models.num_data_classes) get the batch's
class labels, in training replaced by the null label with probability training.label_dropout
(classifier-free guidance, Ho & Salimans 2022).
"""
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from score_sde import config_checks
from score_sde import edm, flows
from score_sde import models as models_lib
from score_sde import sde as sde_lib


def _reduce(per_dim: jax.Array, reduce_mean: bool) -> jax.Array:
  """(B, ...) squared errors -> (B,): mean over dimensions, or half the sum."""
  flat = per_dim.reshape(per_dim.shape[0], -1)
  return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def drop_labels(key, class_labels: jax.Array, rate: float, null_label) -> jax.Array:
  """class_labels (B, ...) with each row replaced by `null_label` (broadcast to a row: the null
  class, or 0 = the empty caption's word ids) independently with probability `rate` (label or
  context dropout: one model learns the conditional and the unconditional score)."""
  drop = jax.random.bernoulli(key, rate, class_labels.shape[:1])
  drop = drop.reshape(drop.shape + (1,) * (class_labels.ndim - 1))
  return jnp.where(drop, jnp.asarray(null_label, class_labels.dtype), class_labels)


def _conditioned(fn: Callable, class_labels: Optional[jax.Array]) -> Callable:
  """fn(x, labels_or_t, rng) passing class_labels on to fn when they are given."""
  if class_labels is None:
    return fn
  return lambda x, s, rng: fn(x, s, rng, class_labels=class_labels)


def continuous_dsm_loss(key, x0, score_fn, sde: sde_lib.SDE, *, reduce_mean: bool,
                        likelihood_weighting: bool, eps: float = 1e-5,
                        class_labels: Optional[jax.Array] = None) -> jax.Array:
  """Denoising score matching over t ~ U(eps, T) (paper, Eq. 7).

  x(t) = mean(x0, t) + std(t) z. Default weighting lambda(t) = std(t)^2 gives the loss
  |std s(x(t), t) + z|^2; likelihood weighting lambda(t) = g(t)^2 (Song et al. 2021b) gives
  g(t)^2 |s(x(t), t) + z / std|^2. `score_fn(x, t, rng)` takes an rng for dropout, and
  `class_labels=` int (B,) when they are given. Returns the per-example losses (B,).
  """
  score_fn = _conditioned(score_fn, class_labels)
  t_key, z_key, dropout_key = jax.random.split(key, 3)
  t = jax.random.uniform(t_key, (x0.shape[0],), minval=eps, maxval=sde.T)
  z = jax.random.normal(z_key, x0.shape)
  mean, std = sde.marginal_prob(x0, t)
  score = score_fn(mean + sde_lib.expand_to(std, x0) * z, t, dropout_key)
  if likelihood_weighting:
    g2 = sde.sde(jnp.zeros_like(x0), t)[1] ** 2
    losses = _reduce(jnp.square(score + z / sde_lib.expand_to(std, x0)), reduce_mean) * g2
  else:
    losses = _reduce(jnp.square(score * sde_lib.expand_to(std, x0) + z), reduce_mean)
  return losses


def flow_matching_loss(key, x0, velocity_fn, sde: sde_lib.SDE, *, reduce_mean: bool,
                       eps: float = 1e-5, class_labels: Optional[jax.Array] = None,
                       z: Optional[jax.Array] = None) -> jax.Array:
  """Conditional flow matching over t ~ U(eps, T) (Lipman et al. 2023, Eq. 9; Liu et al. 2023,
  Eq. 1): |v(x(t), t) - u|^2 with x(t) = alpha x0 + sigma z and u = alpha' x0 + sigma' z
  (flows.conditional_path; for the rectified flow u = z - x0). Its minimiser is the flow's
  velocity E[u | x(t)], since E|v - u|^2 = E|v - E[u | x(t)]|^2 + const. On the VP SDE this is
  flow matching's VP path.

  z: the noise paired with x0 (B, ...), e.g. a reflow coupling (score_sde.reflow); None: drawn
  from `key`, independent of x0. `velocity_fn(x, t, rng)` takes an rng for dropout, and
  `class_labels=` (B, ...) when they are given. Returns the per-example losses (B,).
  """
  velocity_fn = _conditioned(velocity_fn, class_labels)
  t_key, z_key, dropout_key = jax.random.split(key, 3)
  t = jax.random.uniform(t_key, (x0.shape[0],), minval=eps, maxval=sde.T)
  z = jax.random.normal(z_key, x0.shape) if z is None else z
  point, target = flows.conditional_path(sde, x0, z, t)
  return _reduce(jnp.square(velocity_fn(point, t, dropout_key) - target), reduce_mean)


def smld_loss(key, x0, model_fn, vesde: sde_lib.VESDE, *, reduce_mean: bool,
              class_labels: Optional[jax.Array] = None) -> jax.Array:
  """NCSN's loss (Song & Ermon 2019): a noise level chosen uniformly among the N discrete sigmas,
  weighted by sigma^2. The model gets label j indexing the sigmas in descending order (and
  `class_labels=` int (B,) when they are given)."""
  model_fn = _conditioned(model_fn, class_labels)
  label_key, z_key, dropout_key = jax.random.split(key, 3)
  labels = jax.random.randint(label_key, (x0.shape[0],), 0, vesde.N)
  sigmas = jnp.asarray(vesde.discrete_sigmas[::-1], jnp.float32)[labels]
  noise = sde_lib.expand_to(sigmas, x0) * jax.random.normal(z_key, x0.shape)
  score = model_fn(x0 + noise, labels, dropout_key)
  target = -noise / sde_lib.expand_to(sigmas**2, x0)
  return _reduce(jnp.square(score - target), reduce_mean) * sigmas**2


def ddpm_loss(key, x0, model_fn, vpsde: sde_lib.VPSDE, *, reduce_mean: bool,
              class_labels: Optional[jax.Array] = None) -> jax.Array:
  """DDPM's simplified loss (Ho et al. 2020, Eq. 14): predict the noise at a uniform step i. The
  model gets `class_labels=` int (B,) when they are given."""
  model_fn = _conditioned(model_fn, class_labels)
  label_key, z_key, dropout_key = jax.random.split(key, 3)
  labels = jax.random.randint(label_key, (x0.shape[0],), 0, vpsde.N)
  noise = jax.random.normal(z_key, x0.shape)
  signal = jnp.asarray(vpsde.sqrt_alphas_cumprod, jnp.float32)[labels]
  noise_scale = jnp.asarray(vpsde.sqrt_1m_alphas_cumprod, jnp.float32)[labels]
  perturbed = sde_lib.expand_to(signal, x0) * x0 + sde_lib.expand_to(noise_scale, x0) * noise
  prediction = model_fn(perturbed, labels, dropout_key)
  return _reduce(jnp.square(prediction - noise), reduce_mean)


def label_dropout(config) -> float:
  """config.training.label_dropout (absent or None: 0), checked to lie in [0, 1)."""
  if config.training.get('label_dropout') is None:
    return 0.0
  return config_checks.unit_interval(config, 'training.label_dropout')


def get_loss_fn(config, sde: sde_lib.SDE, model, train: bool, per_example: bool = False,
                null_condition=None) -> Callable:
  """loss_fn(params, key, x0, class_labels=None) -> the batch-mean loss (or the per-example
  losses (B,) with per_example=True), as selected by config.training.

  A conditional model (models.example_condition: class-conditional, or an ldm_unet conditioned
  on captions) needs its conditions class_labels (B, ...) (ValueError when traced without them);
  with `train`, each is replaced by the null condition (`null_condition`, default the model's:
  the null label num_classes, the empty caption) with probability training.label_dropout, drawn
  from a key split off `key`. Unconditional models ignore class_labels. With
  model.preconditioning = 'edm' the loss is EDM's (edm.py), on noise levels drawn from
  training.edm_p_mean / edm_p_std; a velocity model (flows.is_velocity: model.parameterization
  'velocity', or training.sde 'rectified_flow') trains on `flow_matching_loss`. Raises
  ValueError, before anything is compiled, for combinations with no loss: discrete training of
  subVP or of a velocity model, likelihood weighting with discrete training, EDM or velocity,
  EDM with velocity, label dropout outside [0, 1) or without a conditional model.
  """
  reduce_mean = bool(config_checks.get(config, 'training.reduce_mean'))
  continuous = bool(config_checks.get(config, 'training.continuous'))
  likelihood_weighting = bool(config_checks.get(config, 'training.likelihood_weighting'))
  velocity = flows.is_velocity(config)
  if not continuous and likelihood_weighting:
    raise ValueError('Config field training.likelihood_weighting = True needs '
                     'training.continuous = True; discrete SMLD/DDPM losses have no weighting.')
  if not continuous and not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE)):
    raise ValueError(f'Config field training.continuous = False is only supported for '
                     f"training.sde in ['vesde', 'vpsde'], not {type(sde).__name__}.")
  preconditioning = edm.from_config(config)
  dropout_rate = label_dropout(config)
  example = models_lib.example_condition(config)
  if dropout_rate > 0 and example is None:
    raise ValueError(f'Config field training.label_dropout = {dropout_rate} needs a '
                     'conditional model: model.num_classes set with model.name in '
                     "['ddpm', 'mlp', 'ncsnpp'], or model.conditioning with 'ldm_unet'.")
  null = example[0] if null_condition is None and example is not None else null_condition

  def example_losses(params, key, x0, class_labels=None):
    if example is None:
      class_labels = None
    elif class_labels is None:
      raise ValueError('The model is conditional (model.num_classes or model.conditioning): '
                       "its loss needs the batches' conditions (the dataset must yield "
                       "'label' or 'caption').")
    elif train and dropout_rate > 0:
      key, drop_key = jax.random.split(key)
      class_labels = drop_labels(drop_key, class_labels, dropout_rate, null)
    variables = {'params': params}
    if velocity:
      velocity_fn = models_lib.get_velocity_fn(sde, model, variables, train=train)
      return flow_matching_loss(key, x0, velocity_fn, sde, reduce_mean=reduce_mean,
                                class_labels=class_labels)
    if preconditioning is not None:
      model_fn = models_lib.get_model_fn(model, variables, train=train)
      key, dropout_key = jax.random.split(key)
      return preconditioning.loss(key, x0, model_fn, reduce_mean=reduce_mean, rng=dropout_key,
                                  class_labels=class_labels)
    if continuous:
      score_fn = models_lib.get_score_fn(sde, model, variables, train=train, continuous=True)
      return continuous_dsm_loss(key, x0, score_fn, sde, reduce_mean=reduce_mean,
                                 likelihood_weighting=likelihood_weighting,
                                 class_labels=class_labels)
    model_fn = models_lib.get_model_fn(model, variables, train=train)
    discrete_loss = smld_loss if isinstance(sde, sde_lib.VESDE) else ddpm_loss
    return discrete_loss(key, x0, model_fn, sde, reduce_mean=reduce_mean,
                         class_labels=class_labels)

  if per_example:
    return example_losses
  return lambda params, key, x0, class_labels=None: jnp.mean(
      example_losses(params, key, x0, class_labels))


def get_optimizer(config) -> optax.GradientTransformation:
  """Adam with decoupled weight decay, linear warm-up and global-norm clipping (config.optim;
  beta2 0.999 unless optim.beta2 is set).

  The k-th update (k = 1, 2, ...) uses learning rate lr * min(k / warmup, 1) (no warm-up if
  warmup <= 0); gradients are rescaled to global norm at most grad_clip (no clipping if < 0).
  """
  config_checks.choice(config, 'optim.optimizer', ('Adam',))
  lr = config_checks.positive_float(config, 'optim.lr')
  warmup = config_checks.get(config, 'optim.warmup')
  grad_clip = config_checks.get(config, 'optim.grad_clip')

  def schedule(count):
    return lr * jnp.minimum((count + 1) / warmup, 1.0) if warmup > 0 else lr

  beta2 = 0.999 if config.optim.get('beta2') is None else config_checks.unit_interval(
      config, 'optim.beta2')
  adam = optax.adamw(schedule, b1=config_checks.unit_interval(config, 'optim.beta1'), b2=beta2,
                     eps=config_checks.positive_float(config, 'optim.eps'),
                     weight_decay=config_checks.get(config, 'optim.weight_decay'))
  return optax.chain(optax.clip_by_global_norm(grad_clip), adam) if grad_clip >= 0 else adam


class TrainState(flax.struct.PyTreeNode):
  """Everything a training run carries between steps (and checkpoints).

  step: number of updates done (int32 scalar). rng: base key; step k uses fold_in(rng, k).
  """

  step: jax.Array
  params: dict
  params_ema: dict
  opt_state: optax.OptState
  rng: jax.Array


def init_train_state(key, params, optimizer: optax.GradientTransformation) -> TrainState:
  # The EMA starts as a copy: a separate buffer, so the state can be donated to the train step.
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    params_ema=jax.tree.map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=key)


def ema_update(params_ema, params, rate: float):
  """Exponential moving average: rate * ema + (1 - rate) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, params_ema, params)


def get_train_step(config, sde, model, optimizer, null_condition=None) -> Callable:
  """train_steps(state, x0s, class_labels=None) -> (state, losses) running len(x0s) updates in
  one lax.scan.

  x0s has shape (n_steps, B, ...) (n_steps = config.training.n_jitted_steps in the driver);
  class_labels (n_steps, B, ...) the conditions (needed by conditional models, ignored
  otherwise); losses has shape (n_steps,); null_condition as in `get_loss_fn`. Jit it once per
  n_steps. One step runs without a loop: inside a while loop XLA:CPU computes convolution weight
  gradients 10-20x slower (measured with jax 0.10 on 2 cores), so convolutional models train on
  CPU with n_jitted_steps = 1.
  """
  loss_fn = get_loss_fn(config, sde, model, train=True, null_condition=null_condition)
  ema_rate = config_checks.unit_interval(config, 'model.ema_rate')

  def one_step(state: TrainState, batch):
    x0, class_labels = batch
    key = jax.random.fold_in(state.rng, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, key, x0, class_labels)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              params_ema=ema_update(state.params_ema, params, ema_rate))
    return new_state, loss

  def train_steps(state, x0s, class_labels=None):
    if x0s.shape[0] == 1:
      first_labels = None if class_labels is None else class_labels[0]
      state, loss = one_step(state, (x0s[0], first_labels))
      return state, loss[None]
    return jax.lax.scan(one_step, state, (x0s, class_labels))

  return train_steps


def get_eval_step(config, sde, model) -> Callable:
  """eval_step(state, key, x0, class_labels=None) -> per-example losses (B,) of the EMA
  parameters (no dropout, no label dropout); class_labels int (B,) as in `get_loss_fn`."""
  loss_fn = get_loss_fn(config, sde, model, train=False, per_example=True)

  def eval_step(state: TrainState, key, x0, class_labels=None):
    return loss_fn(state.params_ema, key, x0, class_labels)

  return eval_step
