"""Consistency runs through the driver: the recipes' paper defaults and refusals, the CD step
against a hand-written Heun step of the teacher run, the target network's EMA, resume, the
teacher's denoiser against Tweedie's closed form, guidance of a conditional student, and a CD
student of the oracle against one Euler step of its teacher."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs.fewstep import toy_cd, toy_ict
from score_sde import consistency, consistency_runs, distillation, methods, oracle_students
from score_sde import lpips, sampling, train, trained
from score_sde import models as models_lib
from score_sde import sde as sde_lib
from score_sde.gaussian_mixture import example_mixture
from score_sde.sampling import start, streams

from .helpers import tiny_config


def tiny_student(base, **consistency_fields):
  """A fewstep config (toy_cd / toy_ict module) with tiny_config's sizes and run length."""
  config = base.get_config()
  tiny = tiny_config()
  config.training.update(batch_size=64, n_iters=20, n_jitted_steps=5, log_freq=5, eval_freq=10,
                         snapshot_freq=10, snapshot_sampling=False)
  config.model.update(nf=tiny.model.nf, num_layers=tiny.model.num_layers, num_scales=50)
  config.eval.update(num_samples=256, batch_size=128)
  config.optim.warmup = 5
  config.consistency.update(consistency_fields)
  return config


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('teacher'))
  train.train(tiny_config(), workdir)
  return workdir


def test_each_method_defaults_to_its_papers_recipe():
  start_level = 152.0
  cd = consistency_runs.recipe_from_config(tiny_student(toy_cd), 'cd', start_level)
  assert (cd.num_levels, cd.level_sampling, cd.distance, cd.weighting, cd.target_ema_rate,
          cd.teacher_solver) == (18, 'uniform', 'l2', 'uniform', 0.95, 'heun')
  assert cd.sigma_min == 0.002 and cd.sigma_max == start_level and cd.rho == 7.0
  paper = dict(curriculum_end=None)  # toy_ict shortens the curriculum for its short run
  ict = consistency_runs.recipe_from_config(tiny_student(toy_ict, **paper), 'ict', start_level)
  assert (ict.curriculum_start, ict.num_levels, ict.level_sampling, ict.distance, ict.weighting,
          ict.target_ema_rate) == (10, 1281, 'lognormal', 'pseudo_huber', 'ict', 0.0)
  assert (ict.p_mean, ict.p_std) == (-1.1, 2.0)
  ct = consistency_runs.recipe_from_config(tiny_student(toy_ict, **paper), 'ct', start_level)
  assert (ct.curriculum_start, ct.num_levels, ct.target_ema_rate) == (2, 151, None)
  # CT's target rate follows exp(s0 log mu0 / N(k)); iCT's N(k) is its doubling curriculum.
  np.testing.assert_allclose(ct.target_rate(0), 0.9, rtol=1e-6)
  assert int(ict.levels(0)) == 11 and int(ict.levels(20)) == 1281
  sigma, sigma_next = ict.draw_pair(jax.random.PRNGKey(0), 0, 4096)
  levels = np.asarray(consistency.karras_sigma(np.arange(11), 11, 0.002, start_level))
  index = np.searchsorted(levels, np.asarray(sigma) * (1 + 1e-6)) - 1
  np.testing.assert_allclose(np.asarray(sigma_next), levels[index + 1], rtol=1e-5)
  frequencies = np.bincount(index, minlength=10) / 4096
  probabilities = np.exp(consistency.lognormal_pair_logits(11, 11, 0.002, start_level))
  np.testing.assert_allclose(frequencies, probabilities, atol=4.5 * np.sqrt(0.25 / 4096))


@pytest.mark.parametrize('method, fields, message', [
    ('ict', {'num_levels': 40}, r"consistency.num_levels = 40 does not apply to "
                                r"training.method = 'ict' \(it is for \['cd'\]\)"),
    ('cd', {'distance': 'l1'}, r"consistency.distance = 'l1' is not allowed; allowed: "
                               r"\['l2', 'pseudo_huber', 'lpips'\]"),
    ('cd', {'sigma_max': 500.0}, r"sigma_max = 500.0 must lie in \(sigma_min = 0.002, the "
                                 r"SDE's level at T = 152"),
    ('cd', {'num_levels': 1}, r'consistency.num_levels = 1 must be an integer >= 2'),
    ('ict', {'target_ema_rate': 1.0}, r'target_ema_rate = 1.0 must be a number in \[0, 1\)'),
])
def test_bad_recipes_are_refused_naming_the_field(method, fields, message):
  config = tiny_student(toy_cd if method == 'cd' else toy_ict, **fields)
  with pytest.raises(ValueError, match=message):
    consistency_runs.recipe_from_config(config, method, 152.0)


def test_a_consistency_method_refuses_a_score_model_and_a_teacher_it_cannot_use(teacher_run):
  config = tiny_student(toy_cd)
  config.model.preconditioning = None
  with pytest.raises(ValueError, match="set model.preconditioning = 'consistency'"):
    methods.get_method(config)
  config = tiny_student(toy_ict)
  config.training.teacher = teacher_run
  with pytest.raises(ValueError, match="training.teacher = .* is for training.method = 'cd'"):
    methods.get_method(config)
  with pytest.raises(ValueError, match='set training.teacher to its workdir'):
    methods.get_method(tiny_student(toy_cd))
  recipe = consistency_runs.recipe_from_config(tiny_student(toy_cd), 'cd', 152.0)
  ve_levels = consistency_runs.levels_of_sde(sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=9))
  with pytest.raises(ValueError, match=r'covers the noise levels \[0.01, 50\] but the student '
                                       r'is distilled on \[0.002, 152\]'):
    consistency_runs.check_teacher_levels(recipe, *ve_levels)
  score_config = tiny_config()
  score_config.model.preconditioning = 'consistency'
  with pytest.raises(ValueError, match="trained by training.method in \\['cd', 'ct', 'ict'\\]"):
    methods.get_method(score_config)


@pytest.mark.parametrize('sde', [sde_lib.VPSDE(N=1000), sde_lib.subVPSDE(N=1000),
                                 sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)])
def test_the_teachers_denoiser_is_tweedies_for_gaussian_data(sde):
  """Data N(0, s^2 I): the score at t is -x / (alpha^2 s^2 + sigma^2), and the denoiser at EDM
  level sigma~ is s^2 / (s^2 + sigma~^2) x."""
  s = 0.7

  def score_fn(x, t):
    mean, std = sde.marginal_prob(jnp.ones((x.shape[0], 1)), t)
    return -x / (mean**2 * s**2 + std[:, None]**2)

  levels = jnp.asarray([0.02, 0.3, 1.0, 9.0])
  lowest, _ = consistency_runs.levels_of_sde(sde)
  levels = jnp.maximum(levels, 1.5 * lowest)
  times = distillation.time_of_level(sde, levels)
  np.testing.assert_allclose(distillation.level_of_time(sde, times), levels, rtol=1e-4)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  denoised = distillation.score_denoiser(score_fn, sde)(x, levels)
  np.testing.assert_allclose(denoised, s**2 / (s**2 + levels[:, None]**2) * x, rtol=2e-3,
                             atol=1e-5)


def heun_step(denoiser, x, sigma, sigma_next):
  """EDM Alg. 1's Heun step from sigma to sigma_next, written out in numpy."""
  d = (x - np.asarray(denoiser(x, sigma))) / sigma[:, None]
  euler = x + (sigma_next - sigma)[:, None] * d
  d_next = (euler - np.asarray(denoiser(jnp.asarray(euler), sigma_next))) / sigma_next[:, None]
  return x + (sigma_next - sigma)[:, None] * 0.5 * (d + d_next)


def test_a_cd_step_minimises_the_distance_to_the_teachers_heun_step(teacher_run):
  config = tiny_student(toy_cd)
  config.training.teacher = teacher_run
  method = methods.get_method(config)
  state = method.initial_state
  x0 = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (64, 2)), np.float32) * 4 - 2
  new_state, metrics = jax.jit(method.train_steps)(state, {'x': x0[None]})
  # The same draws as the step: fold_in(rng, 0) split into (levels, noise, dropout, labels).
  level_key, noise_key, _, _ = jax.random.split(jax.random.fold_in(state.rng, 0), 4)
  recipe = consistency_runs.recipe_from_config(config, 'cd', 152.16698)
  index = np.asarray(jax.random.randint(level_key, (64,), 0, 17))
  levels = np.asarray(consistency.karras_sigma(np.arange(18), 18, 0.002, recipe.sigma_max))
  sigma, sigma_next = levels[index], levels[index + 1]
  noise = np.asarray(jax.random.normal(noise_key, x0.shape))
  run = trained.load(teacher_run)
  teacher = distillation.score_denoiser(run.score_fn(), run.sde)
  x_next = x0 + sigma_next[:, None] * noise
  x = heun_step(teacher, x_next, sigma_next.astype(np.float32), sigma.astype(np.float32))
  f = recipe.parameterization.consistency_fn(
      models_lib.get_model_fn(methods.build_experiment(config).model,
                              {'params': state.params}))
  expected = np.mean(np.sum((np.asarray(f(jnp.asarray(x_next), jnp.asarray(sigma_next)))
                             - np.asarray(f(jnp.asarray(x), jnp.asarray(sigma))))**2, axis=1))
  np.testing.assert_allclose(float(metrics['loss'][0]), expected, rtol=2e-3)
  assert int(metrics['num_levels'][0]) == 18
  # The target follows the updated student at rate 0.95, the EMA at model.ema_rate.
  jax.tree.map(lambda target, old, new: np.testing.assert_allclose(
      target, 0.95 * old + 0.05 * new, rtol=1e-5, atol=1e-7),
      new_state.params_target, state.params_target, new_state.params)
  jax.tree.map(lambda ema, old, new: np.testing.assert_allclose(
      ema, 0.999 * old + 0.001 * new, rtol=1e-5, atol=1e-7),
      new_state.params_ema, state.params_ema, new_state.params)


def test_cd_and_ict_runs_resume_bitwise_and_load_for_sampling(teacher_run, tmp_path):
  config = tiny_student(toy_cd)
  config.training.teacher = teacher_run
  straight = train.train(config, str(tmp_path / 'straight'))
  config.training.n_iters = 10
  train.train(config, str(tmp_path / 'resumed'))
  config.training.n_iters = 20
  resumed = train.train(config, str(tmp_path / 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  run = trained.load(str(tmp_path / 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, run.variables['params'], straight.params_ema)
  sample = sampling.consistency.get_consistency_sampler(run.sde)
  samples, nfe = jax.jit(lambda key: sample(key, run.score_fn(), (16, 2)))(jax.random.PRNGKey(0))
  assert samples.shape == (16, 2) and nfe == 1 and np.all(np.isfinite(samples))


def test_an_ict_step_is_the_weighted_pseudo_huber_loss_and_its_target_is_the_student():
  config = tiny_student(toy_ict, curriculum_end=None)  # iCT's 1281 levels at the end
  method = methods.get_method(config)
  state = method.initial_state
  x0 = np.asarray(jax.random.uniform(jax.random.PRNGKey(5), (64, 2)), np.float32) * 4 - 2
  new_state, metrics = jax.jit(method.train_steps)(state, {'x': x0[None]})
  level_key, noise_key, _, _ = jax.random.split(jax.random.fold_in(state.rng, 0), 4)
  sigma_max = float(consistency_runs.levels_of_sde(methods.build_experiment(config).sde)[1])
  logits = np.full(1280, -np.inf)  # over the curriculum's largest N = 1281 levels
  logits[:10] = np.log(np.diff(stats.norm.cdf(np.log(consistency.karras_sigma(
      np.arange(11), 11, 0.002, sigma_max)), -1.1, 2.0)))
  index = np.asarray(jax.random.categorical(level_key, jnp.asarray(logits), shape=(64,)))
  levels = np.asarray(consistency.karras_sigma(np.arange(11), 11, 0.002, sigma_max))
  sigma, sigma_next = levels[index], levels[index + 1]
  noise = np.asarray(jax.random.normal(noise_key, x0.shape))
  f = consistency.preconditioning_from_config(config).consistency_fn(
      models_lib.get_model_fn(methods.build_experiment(config).model, {'params': state.params}))
  student = np.asarray(f(jnp.asarray(x0 + sigma_next[:, None] * noise), jnp.asarray(sigma_next)))
  target = np.asarray(f(jnp.asarray(x0 + sigma[:, None] * noise), jnp.asarray(sigma)))
  c = 0.00054 * np.sqrt(2)
  huber = np.sqrt(np.sum((student - target)**2, axis=1) + c**2) - c
  expected = np.mean(huber / (sigma_next - sigma))
  np.testing.assert_allclose(float(metrics['loss'][0]), expected, rtol=2e-3)
  assert int(metrics['num_levels'][0]) == 11
  # iCT has no EMA target: the target is the student itself after every step.
  jax.tree.map(np.testing.assert_array_equal, new_state.params_target, new_state.params)


def test_guidance_of_a_conditional_student_mixes_its_consistency_functions():
  """One guided step is w f(x_T | c) + (1 - w) f(x_T | null) at the prior draws (the data
  estimate of the guided score, guidance.combine's convention)."""
  config = tiny_student(toy_ict)
  config.model.num_classes = 3
  config.sampling.guidance_scale = 2.0
  experiment = methods.build_experiment(config)
  variables = {'params': experiment.initial_state.params}
  draw = sampling.get_model_sampler(config, experiment.sde, experiment.model, (6, 2))
  key = jax.random.PRNGKey(4)
  labels = jnp.asarray([0, 1, 2, 0, 1, 2])
  samples, nfe = draw(variables, key, class_labels=labels)
  assert nfe == 1
  sde = experiment.sde
  x_T = start.prior_draws(sde, streams.sample_keys(key, 0, 6), (6, 2))
  alpha_T, sigma_T = (float(v) for v in sampling.grid.alpha_sigma(sde, sde.T))
  f = consistency.preconditioning_from_config(config).consistency_fn(
      models_lib.get_model_fn(experiment.model, variables))
  level = jnp.full(6, sigma_T / alpha_T)
  conditional = f(x_T / alpha_T, level, class_labels=labels)
  unconditional = f(x_T / alpha_T, level, class_labels=jnp.full(6, 3))
  np.testing.assert_allclose(samples, 2.0 * conditional - 1.0 * unconditional, rtol=1e-3,
                             atol=1e-4)


def test_a_cd_student_of_the_oracle_beats_one_euler_step_of_its_teacher_by_far():
  mixture = example_mixture(2)
  config = toy_cd.get_config()
  config.training.update(batch_size=256, n_iters=1500)
  config.model.update(nf=64, num_layers=3)
  config.optim.warmup = 100
  config.model.ema_rate = 0.99
  student = oracle_students.train(config, mixture, key=jax.random.PRNGKey(0))
  key, n = jax.random.PRNGKey(1), 4000
  one_step, _ = student.sample(key, (n, 2))
  sde = student.experiment.sde
  euler = sampling.ode.get_ode_sampler(sde, sampling.ode.ODESolver(solver='euler', num_steps=1),
                                       noise_removal=False)
  teacher_step, _ = jax.jit(lambda k: euler(k, mixture.score_fn(sde), (n, 2)))(key)
  exact = mixture.sample(jax.random.PRNGKey(2), n)[0]
  errors = {name: mixture.sliced_wasserstein(np.asarray(x))
            for name, x in [('student', one_step), ('euler', teacher_step), ('exact', exact)]}
  print(errors)
  assert errors['student'] < 0.3 * errors['euler']
  assert errors['student'] > errors['exact']


def test_the_lpips_distance_compares_images_at_224_pixels_in_minus_one_to_one():
  config = tiny_student(toy_cd, distance='lpips', lpips_weights='tests/data/lpips')
  config.data.centered = False  # the model sees images in [0, 1]: LPIPS gets 2 x - 1
  recipe = consistency_runs.recipe_from_config(config, 'cd', 152.0)
  distance = consistency_runs.get_distance(config, recipe)
  keys = jax.random.split(jax.random.PRNGKey(6))
  a, b = (jax.random.uniform(k, (2, 16, 16, 1)) for k in keys)
  params = lpips.load_lpips('tests/data/lpips')
  resize = lambda x: jax.image.resize(2 * x - 1, (2, 224, 224, 1), 'bilinear')  # noqa: E731
  np.testing.assert_allclose(distance(a, b), lpips.apply(params, resize(a), resize(b)),
                             rtol=1e-5)
  assert float(distance(a, b)[0]) > 0 and float(distance(a, a)[0]) == 0.0
