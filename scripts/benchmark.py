"""Benchmarks, run side by side in one process (this machine is shared: compare ratios).

  python scripts/benchmark.py likelihood [--repeats 3] [--batch 16] [--size 16]
  python scripts/benchmark.py train [--repeats 3] [--batch 16] [--size 16] [--steps 5]
  python scripts/benchmark.py samplers [--repeats 3] [--batch 10000]
  python scripts/benchmark.py stable_diffusion [--repeats 3] [--steps 50] [--batches 1,8]
  python scripts/benchmark.py latent [--repeats 3] [--steps 20] [--batch 64]
  python scripts/benchmark.py fewstep [--batch 20000] [--digits-teacher W --digits-cd W ...]

likelihood: bits/dim of a batch of images (size x size x 3) under a small untrained network,
through the probability-flow ODE with a Hutchinson (Rademacher) divergence, rtol = atol = 1e-5:
  * ours: score_sde.likelihood (diffrax Dopri5, one jitted program, each sample solved alone);
  * scipy: the official approach, scipy.integrate.solve_ivp(RK45) over the whole batch as one
    ODE, calling the same jitted drift-and-divergence function once per evaluation.
Reports the median wall time of `repeats` runs (compile excluded, and reported separately),
the NFE of each and their bits/dim, as JSON on stdout.

train: training steps of small versions of the official NCSN++ (VE, continuous) and DDPM++ (VP,
continuous) CIFAR-10 configs (nf 32, ch_mult (1, 2, 2), two res blocks, attention at 8x8, on
size x size x 3 images): steps/s and achieved FLOP/s of jitted single steps, with the FLOPs of one
step from XLA's cost analysis of the compiled step, beside the machine's fp32 matmul peak
measured in the same run (the best median over square matmuls of a few sizes); and steps/s of the
same steps run as one lax.scan (n_jitted_steps > 1).

samplers: on the 2-D Gaussian-mixture oracle with its exact score (score_sde.gaussian_mixture.
example_mixture), for VP, sub-VP and VE: the sample error of the PC sampler at 1,000 steps
(reverse diffusion, no corrector), then for each fast sampler the smallest NFE on a ladder whose
error is within the sampling noise of PC's. Each sampler runs to the SDE's eps (1e-3 for VP and
sub-VP, 1e-5 for VE) unless its row names another (the 3M row with eps = 0.05, on sub-VP only).
Error: the sliced 1-Wasserstein distance between `batch` samples and the known density
(GaussianMixture.sliced_wasserstein, 32 directions). Even exact samples have an error (the
floor), which varies from draw to draw: its mean and standard deviation sd over 5 draws of exact
samples are measured too, and a sampler reaches PC when its error is at most PC's + 2 sd. Every
sampler starts from the same prior draws. Also the wall time of each at that NFE (median of
`repeats`; the machine is shared, so compare ratios).

stable_diffusion: Stable Diffusion 1.5 at its published shape with random weights (no weights
are downloaded): the parameter counts of the U-Net, VAE and text encoder from their configs
(jax.eval_shape), the memory XLA plans for one guided denoising step (the U-Net on a batch of 2
at 64 x 64 x 4 latents), one VAE decode to 512 x 512 and one text encoding, in float32 and
bfloat16 (compiled memory analysis: arguments + outputs + temporaries), and the seconds per
denoising step at 64 x 64 x 4 latents (median of `repeats`, compile excluded) with and without
guidance in float32. On a GPU also 512 x 512 text-to-image in bfloat16: diffusers' DDIM, `steps`
steps, guidance 7.5, for each batch size of --batches: denoising iterations per second (steps /
the seconds of the whole denoising loop, one jitted program), images per second with text
encoding and VAE decoding, and the device's peak memory.

latent: training steps/s of the compositional-digits demo's text-conditional U-Net
(configs/latent/pairs_text.py) on the 4 x 4 x 4 latents of 16 x 16 digit pairs, each batch
encoded inside the step by the demo's autoencoder (configs/latent/pairs_autoencoder.py, random
weights: the speed does not depend on them), beside the same U-Net on the 16 x 16 x 1 pixels
(the same blocks, the same parameter count but for the in and out convolutions); jitted single
steps of `batch` images, the median over `repeats` runs of `steps` steps, compile excluded.

fewstep: one- and few-step generation on the 2-D Gaussian-mixture oracle (example_mixture) with
its exact score on the VP SDE as the teacher: the sliced-W1 error (32 directions) of `batch`
samples, every method from the same prior draws, of DPM-Solver++ 3M at 2-20 NFE, of a CD
student (configs/fewstep/toy_cd.py, the exact teacher's Heun steps) at 1, 2 and 4 steps, an iCT
student (toy_ict.py, the mixture's exact samples as data) at 1 and 2 steps, and of a reflowed
rectified flow (pairs from the exact flow's ODE) at 1 and 2 Euler steps, beside the exact-sample
floor (5 draws). The levels of the multistep samplers are chosen greedily from a grid on other
prior draws (as CM's ternary search). With --digits-teacher and the workdirs of CD / iCT
students of it: FD-digits and accuracy of 1- and 2-step student samples beside the teacher's
DPM-Solver++ at 10 and 20 NFE.
"""
import argparse
import importlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from score_sde import gaussian_mixture, likelihood, losses, models, sampling, sweep
from score_sde import sd_checkpoints, stable_diffusion
from score_sde import sde as sde_lib
from score_sde.models import autoencoder, clip_text, clip_tokenizer, unet_ldm
from configs import default_toy_configs

RTOL = ATOL = 1e-5
EPS = 1e-5


def _untrained_model(image_shape):
  config = default_toy_configs.get_default_configs()
  config.model.update(nf=256, num_layers=3)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, image_shape)
  sde = sde_lib.get_sde(config)
  return sde, models.get_score_fn(sde, model, variables, train=False, continuous=True)


def _median_seconds(run, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = run()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), result


def _ours(sde, score_fn, images, repeats):
  bpd_fn = likelihood.get_bpd_fn(sde, data_scaler=lambda u: 2 * u - 1, dequantization='uniform',
                                 solver=sampling.ODESolver(rtol=RTOL, atol=ATOL), eps=EPS)
  jitted = jax.jit(lambda key, x: bpd_fn(key, score_fn, x))
  key = jax.random.PRNGKey(1)
  start = time.perf_counter()
  jax.block_until_ready(jitted(key, images))
  first = time.perf_counter() - start
  seconds, (bpd, _, nfe) = _median_seconds(
      lambda: jax.block_until_ready(jitted(key, images)), repeats)
  return {'seconds': seconds, 'compile_seconds': first - seconds,
          'nfe_mean': float(np.mean(nfe)), 'nfe_max': int(np.max(nfe)),
          'bpd': float(np.mean(bpd))}


def _scipy(sde, score_fn, images, repeats):
  from scipy import integrate  # here: the GPU machine's environment need not have it
  """The official implementation's likelihood: one RK45 solve over the flattened batch."""
  shape = images.shape
  dim = int(np.prod(shape[1:]))
  probes = jax.random.rademacher(jax.random.PRNGKey(2), shape).astype(jnp.float32)
  drift = lambda x, t: sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]  # noqa: E731

  @jax.jit
  def drift_and_divergence(x, t):
    vec_t = jnp.full(shape[0], t)
    value, jvp = jax.jvp(lambda y: drift(y, vec_t), (x,), (probes,))
    return value, jnp.sum((jvp * probes).reshape(shape[0], -1), axis=-1)

  def ode_func(t, state):
    x = jnp.asarray(state[:-shape[0]].reshape(shape), jnp.float32)
    value, divergence = drift_and_divergence(x, t)
    return np.concatenate([np.asarray(value).reshape(-1), np.asarray(divergence)]).astype(
        np.float64)

  dequantized = (255.0 * np.asarray(images) + np.random.default_rng(0).uniform(size=shape)) / 256
  initial = np.concatenate([(2 * dequantized - 1).reshape(-1), np.zeros(shape[0])])

  def run():
    solution = integrate.solve_ivp(ode_func, (EPS, sde.T), initial, rtol=RTOL, atol=ATOL,
                                   method='RK45')
    z = jnp.asarray(solution.y[:-shape[0], -1].reshape(shape), jnp.float32)
    logp = np.asarray(sde.prior_logp(z)) + solution.y[-shape[0]:, -1]
    bpd = -logp / (dim * np.log(2)) - 1 + 8
    return solution.nfev, bpd

  start = time.perf_counter()
  jax.block_until_ready(drift_and_divergence(jnp.asarray(initial[:-shape[0]].reshape(shape),
                                                         jnp.float32), EPS))
  compile_seconds = time.perf_counter() - start
  seconds, (nfe, bpd) = _median_seconds(run, repeats)
  return {'seconds': seconds, 'compile_seconds': compile_seconds, 'nfe': int(nfe),
          'bpd': float(np.mean(bpd))}


def benchmark_likelihood(repeats: int, batch: int, size: int) -> dict:
  image_shape = (size, size, 3)
  sde, score_fn = _untrained_model(image_shape)
  pixels = jax.random.randint(jax.random.PRNGKey(3), (batch, *image_shape), 0, 256)
  images = pixels.astype(jnp.float32) / 255.0
  ours = _ours(sde, score_fn, images, repeats)
  scipy_result = _scipy(sde, score_fn, images, repeats)
  return {'benchmark': 'likelihood', 'batch': batch, 'image_shape': image_shape,
          'rtol': RTOL, 'atol': ATOL, 'repeats': repeats, 'device': str(jax.devices()[0]),
          'ours_diffrax': ours, 'official_scipy_rk45': scipy_result,
          'speedup': scipy_result['seconds'] / ours['seconds']}


TRAIN_CONFIGS = {'ncsnpp_ve': 'configs.ve.cifar10_ncsnpp_continuous',
                 'ddpmpp_vp': 'configs.vp.cifar10_ddpmpp_continuous'}


def _small_config(module: str, batch: int, size: int):
  config = importlib.import_module(module).get_config()
  config.training.batch_size = batch
  config.data.image_size = size
  config.model.update(nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,))
  return config


def _matmul_peak(repeats: int) -> dict:
  """Best median fp32 FLOP/s of jitted square matmuls (2 n^3 FLOPs each)."""
  best = {'flops_per_second': 0.0}
  for n in (512, 1024, 2048):
    a = jax.random.normal(jax.random.PRNGKey(n), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    seconds, _ = _median_seconds(lambda: jax.block_until_ready(matmul(a)), repeats)
    if 2 * n ** 3 / seconds > best['flops_per_second']:
      best = {'flops_per_second': 2 * n ** 3 / seconds, 'size': n}
  return best


def _train_throughput(config, steps: int, repeats: int) -> dict:
  """Steps/s of `steps` updates run one jitted step at a time (n_jitted_steps = 1) and as one
  lax.scan (n_jitted_steps = steps); FLOPs of one step from XLA's cost analysis."""
  sde = sde_lib.get_sde(config)
  optimizer = losses.get_optimizer(config)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  model, variables = models.init_model(jax.random.PRNGKey(0), config, shape)
  state = losses.init_train_state(jax.random.PRNGKey(1), variables['params'], optimizer)
  batches = jax.random.uniform(jax.random.PRNGKey(2), (steps, config.training.batch_size, *shape))
  train_steps = jax.jit(losses.get_train_step(config, sde, model, optimizer))
  start = time.perf_counter()
  one_step = train_steps.lower(state, batches[:1]).compile()
  compile_seconds = time.perf_counter() - start
  flops = float(one_step.cost_analysis()['flops'])
  scan = train_steps.lower(state, batches).compile()

  def stepwise():
    current = state
    for i in range(steps):
      current, _ = one_step(current, batches[i:i + 1])
    return jax.block_until_ready(current)

  stepwise()
  seconds, _ = _median_seconds(stepwise, repeats)
  jax.block_until_ready(scan(state, batches))
  scan_seconds, _ = _median_seconds(lambda: jax.block_until_ready(scan(state, batches)), repeats)
  parameters = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables['params']))
  return {'parameters': parameters, 'flops_per_step': flops, 'compile_seconds': compile_seconds,
          'steps_per_second': steps / seconds, 'flops_per_second': flops * steps / seconds,
          'scan_steps_per_second': steps / scan_seconds}


def benchmark_train(repeats: int, batch: int, size: int, steps: int) -> dict:
  peak = _matmul_peak(repeats)
  result = {'benchmark': 'train', 'batch': batch, 'image_size': size, 'steps': steps,
            'repeats': repeats, 'device': str(jax.devices()[0]), 'matmul_peak': peak}
  for name, module in TRAIN_CONFIGS.items():
    throughput = _train_throughput(_small_config(module, batch, size), steps, repeats)
    throughput['fraction_of_peak'] = throughput['flops_per_second'] / peak['flops_per_second']
    result[name] = throughput
  return result


NFE_LADDER = (4, 6, 8, 10, 12, 15, 18, 20, 22, 25, 30, 40, 50, 70, 100, 150, 200)
FAST_SAMPLERS = {  # name -> sweep.build_sampler keywords
    'ddim (eta 0, time-uniform)': {'method': 'ddim'},
    'ddim (eta 1, time-uniform)': {'method': 'ddim', 'eta': 1.0},
    'dpm-solver++ 2M (logSNR)': {'method': 'dpm_solver', 'variant': '2M'},
    'dpm-solver++ 2M (time-uniform)': {'method': 'dpm_solver', 'variant': '2M',
                                       'schedule': 'time_uniform'},
    'dpm-solver++ 2M (quadratic)': {'method': 'dpm_solver', 'variant': '2M',
                                    'schedule': 'quadratic'},
    'dpm-solver++ 3M (logSNR)': {'method': 'dpm_solver', 'variant': '3M'},
    'dpm-solver++ 3M (quadratic)': {'method': 'dpm_solver', 'variant': '3M',
                                    'schedule': 'quadratic'},
    # sub-VP only: its sigma(eps) is ~ eps^2 near 0, so eps = 0.05 ends at sigma 0.03, near
    # VP's 0.01 at eps = 1e-3.
    'dpm-solver++ 3M (quadratic, eps 0.05)': {'method': 'dpm_solver', 'variant': '3M',
                                              'schedule': 'quadratic', 'eps': 0.05,
                                              'sdes': ('subvp',)},
    'dpm-solver++ 2S (logSNR)': {'method': 'dpm_solver', 'variant': '2S'},
    'dpm-solver++ 3S (logSNR)': {'method': 'dpm_solver', 'variant': '3S'},
    'edm heun (rho 7)': {'method': 'edm'},
    'edm heun (logSNR)': {'method': 'edm', 'schedule': 'logsnr'},
    'edm heun + churn 10 (rho 7)': {'method': 'edm', 's_churn': 10.0},
}


def benchmark_samplers(repeats: int, batch: int) -> dict:
  gmm = gaussian_mixture.example_mixture(2)
  quality = sweep.known_density_quality(gmm, num_projections=32)
  floors = [quality(np.asarray(gmm.sample(jax.random.PRNGKey(100 + i), batch)[0]))['sliced_w1']
            for i in range(5)]
  floor_sd = float(np.std(floors, ddof=1))
  print('exact-sample floor', floors, flush=True)
  key, shape = jax.random.PRNGKey(0), (batch, 2)
  sdes = {'vp': (sde_lib.VPSDE(), 1e-3), 'subvp': (sde_lib.subVPSDE(), 1e-3),
          've': (sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0), 1e-5)}
  result = {}
  for name, (sde, eps) in sdes.items():
    score_fn = gmm.score_fn(sde)
    pc = sweep.run([{'method': 'pc', 'steps': 1000}], sde, score_fn, shape, key=key,
                   quality=quality, repeats=repeats)[0]
    target = pc['sliced_w1'] + 2 * floor_sd
    rows = {'pc (1000 steps)': pc}
    for label, options in FAST_SAMPLERS.items():
      options = {'eps': eps, **options}
      if name not in options.pop('sdes', sdes):
        continue
      row = {'nfe': None, 'sliced_w1_at_max_nfe': None}
      for nfe in NFE_LADDER:
        try:
          found = sweep.run([{**options, 'nfe': nfe}], sde, score_fn, shape, key=key,
                            quality=quality, repeats=repeats)[0]
        except ValueError:  # budget below one step
          continue
        if found['sliced_w1'] <= target:
          row = found
          break
        row['sliced_w1_at_max_nfe'] = found['sliced_w1']
      rows[label] = row
      print(name, label, row, flush=True)
    result[name] = {'pc_1000_sliced_w1': pc['sliced_w1'], 'target': target, 'samplers': rows}
  result['exact_sample_floor'] = {'mean': float(np.mean(floors)), 'sd': floor_sd}
  return result


def _sd15_modules(dtype):
  a = sd_checkpoints.PRESETS['sd1']
  return (unet_ldm.UNet(a.unet, dtype=dtype), autoencoder.AutoencoderKL(a.vae, dtype=dtype),
          clip_text.CLIPTextTransformer(a.text, dtype=dtype))


def _sd15_shapes(dtype) -> dict:
  """The params shapes of SD 1.5's three networks, in `dtype` (no FLOPs)."""
  unet, vae, text = _sd15_modules(dtype)
  return {'unet': sd_checkpoints.param_shapes(unet, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)),
                                              jnp.zeros((1, 1, 768)), dtype=dtype),
          'vae': sd_checkpoints.param_shapes(vae, jnp.zeros((1, 8, 8, 3)), dtype=dtype),
          'text': sd_checkpoints.param_shapes(text, jnp.zeros((1, 1), jnp.int32), dtype=dtype)}


def _random_params(shapes, key):
  """Parameters shaped like `shapes`: kernels N(0, 1 / fan_in), embeddings N(0, 0.02^2), norm
  scales 1, biases 0 (moderate activations, like a trained network's)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  values = []
  for i, (path, leaf) in enumerate(leaves):
    name, k = path[-1].key, jax.random.fold_in(key, i)
    if name == 'kernel':
      scale = float(np.prod(leaf.shape[:-1])) ** -0.5
      values.append((scale * jax.random.normal(k, leaf.shape)).astype(leaf.dtype))
    elif name == 'embedding':
      values.append((0.02 * jax.random.normal(k, leaf.shape)).astype(leaf.dtype))
    else:
      values.append(jnp.full(leaf.shape, 1.0 if name == 'scale' else 0.0, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, values)


def _planned_bytes(compiled) -> dict:
  """XLA's memory plan of a compiled program, in GiB."""
  analysis = compiled.memory_analysis()
  sizes = {'arguments': analysis.argument_size_in_bytes,
           'outputs': analysis.output_size_in_bytes, 'temporaries': analysis.temp_size_in_bytes}
  sizes['total'] = sum(sizes.values()) - analysis.alias_size_in_bytes
  return {k: v / 2**30 for k, v in sizes.items()}


def _sd15_memory(dtype) -> dict:
  """Planned memory of one guided U-Net step (batch 2, 64 x 64 x 4), a VAE decode to 512 x 512
  and a text encoding of 2 prompts, compiled for this machine's backend."""
  shapes = _sd15_shapes(dtype)
  unet, vae, text = _sd15_modules(dtype)
  spec = jax.ShapeDtypeStruct
  programs = {
      'unet_step_batch2': (lambda p, x, t, c: unet.apply({'params': p}, x, t, c),
                           (shapes['unet'], spec((2, 64, 64, 4), jnp.float32),
                            spec((2,), jnp.int32), spec((2, 77, 768), jnp.float32))),
      'vae_decode_512': (lambda p, z: vae.apply({'params': p}, z, method='decode'),
                         (shapes['vae'], spec((1, 64, 64, 4), jnp.float32))),
      'text_encode_batch2': (lambda p, ids: text.apply({'params': p}, ids)[0],
                             (shapes['text'], spec((2, 77), jnp.int32))),
  }
  return {name: _planned_bytes(jax.jit(f).lower(*args).compile())
          for name, (f, args) in programs.items()}


def _byte_tokenizer() -> clip_tokenizer.CLIPTokenizer:
  """A CLIP-format tokenizer of the 512 byte symbols alone (no merges): valid ids for the random
  text encoder, which has CLIP's 49,408-token table."""
  symbols = clip_tokenizer.byte_characters()
  tokens = symbols + [s + '</w>' for s in symbols] + [clip_tokenizer.START, clip_tokenizer.END]
  return clip_tokenizer.CLIPTokenizer({t: i for i, t in enumerate(tokens)}, [])


def _sd15_pipeline(dtype) -> stable_diffusion.StableDiffusion:
  shapes = _sd15_shapes(dtype)
  params = stable_diffusion.Params(**{name: _random_params(tree, jax.random.PRNGKey(i))
                                      for i, (name, tree) in enumerate(shapes.items())})
  return stable_diffusion.StableDiffusion(sd_checkpoints.PRESETS['sd1'], params,
                                          _byte_tokenizer(), dtype)


def _seconds_per_step(pipe, batch: int, guided: bool, repeats: int) -> float:
  """Median seconds of one jitted denoising step's score: the U-Net on `batch` latents of
  64 x 64 x 4 (2 x batch with guidance)."""
  context = jax.random.normal(jax.random.PRNGKey(0), (batch, 77, 768))
  null = jnp.zeros_like(context)

  @jax.jit
  def step(params, x, t):
    return pipe._score_fn(params, context, null, 7.5 if guided else None)(x, t)

  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 64, 64, 4))
  t = jnp.full((batch,), 0.5)
  jax.block_until_ready(step(pipe.params.unet, x, t))
  seconds, _ = _median_seconds(lambda: jax.block_until_ready(step(pipe.params.unet, x, t)),
                               repeats)
  return seconds


def _gpu_text_to_image(pipe, batches, steps: int, repeats: int) -> dict:
  """512 x 512 text-to-image (diffusers' DDIM, guidance 7.5) per batch size: iterations/s of
  the denoising loop, images/s of the whole (text, loop, decode), peak device memory (GiB)."""
  rows = {}
  for batch in batches:
    prompts = ['a photograph of an astronaut riding a horse'] * batch
    settings = dict(sampler='ddim_diffusers', num_steps=steps, guidance_scale=7.5, height=512,
                    width=512)
    start = time.perf_counter()
    pipe.generate(prompts, **settings)
    first = time.perf_counter() - start
    loop, _ = _median_seconds(lambda: pipe.sample_latents(prompts, **settings), repeats)
    whole, _ = _median_seconds(lambda: pipe.generate(prompts, **settings), repeats)
    stats = jax.devices()[0].memory_stats() or {}
    rows[f'batch_{batch}'] = {
        'iterations_per_second': steps / loop, 'seconds_denoising': loop,
        'images_per_second': batch / whole, 'first_call_seconds_with_compile': first,
        'peak_memory_gib': stats.get('peak_bytes_in_use', float('nan')) / 2**30}
    print(batch, rows[f'batch_{batch}'], flush=True)
  return rows


def benchmark_stable_diffusion(repeats: int, steps: int, batches) -> dict:
  counts = {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
            for name, tree in _sd15_shapes(jnp.float32).items()}
  result = {'benchmark': 'stable_diffusion', 'device': str(jax.devices()[0]),
            'parameters': counts,
            'planned_memory_gib': {'float32': _sd15_memory(jnp.float32),
                                   'bfloat16': _sd15_memory(jnp.bfloat16)}}
  print(json.dumps(result, indent=2), flush=True)
  gpu = jax.default_backend() == 'gpu'
  pipe = _sd15_pipeline(jnp.bfloat16 if gpu else jnp.float32)
  result['seconds_per_step_64x64'] = {
      'dtype': jnp.dtype(pipe.dtype).name,
      'unguided_batch_1': _seconds_per_step(pipe, 1, False, repeats),
      'guided_batch_1': _seconds_per_step(pipe, 1, True, repeats)}
  print(result['seconds_per_step_64x64'], flush=True)
  if gpu:
    result['text_to_image_512'] = _gpu_text_to_image(pipe, batches, steps, repeats)
  return result


def _steps_per_second(method, batch: int, steps: int, repeats: int) -> float:
  """Steps/s of a methods.Method's jitted single step on one batch of digit pairs."""
  from score_sde import datasets
  config = _pairs_text_config()
  arrays = method.batch_arrays(next(datasets.get_dataset(config, 'train', batch)))
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], arrays)
  step = jax.jit(method.train_steps, donate_argnums=0)
  state = jax.tree.map(jnp.copy, method.initial_state)
  state, metrics = step(state, stacked)  # compile
  jax.block_until_ready(metrics)
  holder = {'state': state}

  def run():
    for _ in range(steps):
      holder['state'], out = step(holder['state'], stacked)
    jax.block_until_ready(out)

  seconds, _ = _median_seconds(run, repeats)
  return steps / seconds


def _pairs_text_config():
  from configs.latent import pairs_text
  config = pairs_text.get_config()
  config.latent.scale_factor = 1.0
  return config


def benchmark_latent(repeats: int, steps: int, batch: int) -> dict:
  from configs.latent import pairs_autoencoder
  from score_sde import autoencoder_training, conditions, latent_runs, methods
  ae_config = pairs_autoencoder.get_config()
  parts = autoencoder_training.from_config(ae_config)
  image_shape = (16, 16, 1)
  ae_params = parts.autoencoder.init(jax.random.PRNGKey(0),
                                     jnp.zeros((1, *image_shape)))['params']
  space = latent_runs.LatentSpace(parts.autoencoder, ae_params, image_shape, (4, 4, 4), 1.0,
                                  True, 'random weights')
  config = _pairs_text_config()
  conds = conditions.get_conditions(config)
  latent_experiment = methods.build_experiment(config, space.latent_shape)
  latent_method = methods.Method(**latent_runs.latent_method(
      space, methods.score_method_of(config, latent_experiment, batch, conds),
      methods.score_batch_arrays(config, conds)))
  pixel_config = config.copy_and_resolve_references()
  pixel_config.latent.autoencoder = None
  pixel_config.model.attn_resolutions = (16, 8)  # the same blocks attend, at pixel resolution
  pixel_experiment = methods.build_experiment(pixel_config)
  pixel_method = methods.Method(
      batch_arrays=methods.score_batch_arrays(pixel_config, conds),
      **methods.score_method_of(pixel_config, pixel_experiment, batch, conds))
  count = lambda tree: int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))  # noqa: E731
  latent_rate = _steps_per_second(latent_method, batch, steps, repeats)
  pixel_rate = _steps_per_second(pixel_method, batch, steps, repeats)
  return {'batch': batch,
          'latent': {'shape': list(space.latent_shape), 'steps_per_sec': latent_rate,
                     'parameters': count(latent_experiment.initial_state.params),
                     'autoencoder_parameters': count(ae_params)},
          'pixel': {'shape': list(image_shape), 'steps_per_sec': pixel_rate,
                    'parameters': count(pixel_experiment.initial_state.params)},
          'latent_over_pixel': latent_rate / pixel_rate}


FEWSTEP_NFES = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
LEVEL_GRID = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 6.0)  # EDM levels tried for multistep samplers


def _greedy_levels(error_of_levels, num_steps: int) -> tuple:
  """Levels for a num_steps consistency sampler, added one at a time: each the LEVEL_GRID value
  (below the last) that gives the smallest error_of_levels(levels)."""
  levels = ()
  for _ in range(num_steps - 1):
    candidates = [levels + (level,) for level in LEVEL_GRID if not levels or level < levels[-1]]
    levels = min(candidates, key=error_of_levels)
  return levels


def _student_rows(student_score, sde, shape, key, tuning_key, quality, steps, error_name):
  """sweep rows of a consistency student at each step count of `steps` (levels chosen on
  tuning_key's prior draws)."""

  def error_of(levels, draw_key=tuning_key):
    point = {'method': 'consistency', 'levels': tuple(levels)}
    return sweep.run([point], sde, student_score, shape, key=draw_key, quality=quality,
                     repeats=1)[0]

  rows = {}
  for count in steps:
    levels = _greedy_levels(lambda lv: error_of(lv)[error_name], count)
    rows[f'{count} step{"s" if count > 1 else ""}'] = error_of(levels, key)
  return rows


def _oracle_students(gmm, shape, key, tuning_key, quality) -> dict:
  """CD (1, 2, 4 steps) and iCT (1, 2 steps) students of the exact VP teacher."""
  from configs.fewstep import toy_cd, toy_ict
  from score_sde import oracle_students
  rows = {}
  for name, module, steps in (('cd', toy_cd, (1, 2, 4)), ('ict', toy_ict, (1, 2))):
    config = module.get_config()
    config.training.update(batch_size=512, n_iters=FEWSTEP_STUDENT_STEPS[name])
    config.consistency.update(FEWSTEP_STUDENT_RECIPES[name])
    start = time.perf_counter()
    student = oracle_students.train(config, gmm, key=jax.random.PRNGKey(1))
    seconds = time.perf_counter() - start
    rows[name] = _student_rows(student.score_fn(), student.experiment.sde, shape, key,
                               tuning_key, quality, steps, 'sliced_w1')
    rows[name]['training_seconds'] = seconds
    print(name, rows[name], flush=True)
  return rows


FEWSTEP_STUDENT_STEPS = {'cd': 6000, 'ict': 6000, 'reflow': 6000}
FEWSTEP_STUDENT_RECIPES = {'cd': {}, 'ict': {'curriculum_end': 40}}
REFLOW_PAIRS = 50_000


def _euler_rows(score_fn, sde, shape, key, quality, steps=(1, 2)) -> dict:
  """sweep rows of the flow's ODE in `steps` equal Euler steps from T (no noise removal)."""
  return {f'{count} euler step{"s" if count > 1 else ""}': sweep.run(
      [{'method': 'ode', 'solver': 'euler', 'steps': count, 'noise_removal': False}], sde,
      score_fn, shape, key=key, quality=quality, repeats=1)[0] for count in steps}


def _oracle_reflow(gmm, shape, key, quality) -> dict:
  """The mixture's exact rectified flow, the 2-rectified flow trained on pairs of its ODE, and
  that flow distilled into one step (on pairs of its own ODE), at 1 and 2 Euler steps, with the
  straightness of each on its pairs."""
  from configs.toy import rectified_flow
  from score_sde import flows, oracle_students, reflow
  sde = sde_lib.RectifiedFlow(N=1000)
  config = rectified_flow.get_config()
  config.training.update(batch_size=512, n_iters=FEWSTEP_STUDENT_STEPS['reflow'])
  pair_shape = (REFLOW_PAIRS, 2)
  exact = flows.velocity_score_fn(gmm.velocity_fn(sde), sde)
  rows = {}

  def add(name, score_fn, pairs_key):
    z, x0 = jax.jit(lambda k: reflow.reflow_pairs(k, score_fn, sde, pair_shape))(pairs_key)
    value, error = reflow.straightness(jax.random.PRNGKey(9), z, x0, score_fn.velocity, sde)
    rows[name] = {'straightness': float(value), 'straightness_se': float(error),
                  **_euler_rows(score_fn, sde, shape, key, quality)}
    print(name, rows[name], flush=True)
    return z, x0

  z, x0 = add('1-rectified (exact flow)', exact, jax.random.PRNGKey(3))
  start = time.perf_counter()
  reflowed = oracle_students.train_on_pairs(config, z, x0, key=jax.random.PRNGKey(4))
  z2, x02 = add('2-rectified (reflow)', reflowed.score_fn(), jax.random.PRNGKey(5))
  rows['2-rectified (reflow)']['training_seconds'] = time.perf_counter() - start
  distilled = oracle_students.train_on_pairs(config, z2, x02, key=jax.random.PRNGKey(6),
                                             distill=True)
  rows['2-rectified, distilled'] = _euler_rows(distilled.score_fn(), sde, shape, key, quality,
                                               (1,))
  print('distilled', rows['2-rectified, distilled'], flush=True)
  return rows


def benchmark_fewstep(batch: int, digits: dict) -> dict:
  gmm = gaussian_mixture.example_mixture(2)
  quality = sweep.known_density_quality(gmm, num_projections=32)
  floors = [quality(np.asarray(gmm.sample(jax.random.PRNGKey(100 + i), batch)[0]))['sliced_w1']
            for i in range(5)]
  result = {'exact_sample_floor': {'mean': float(np.mean(floors)),
                                   'sd': float(np.std(floors, ddof=1))}}
  sde, shape = sde_lib.VPSDE(), (batch, 2)
  key, tuning_key = jax.random.PRNGKey(0), jax.random.PRNGKey(7)
  score_fn = gmm.score_fn(sde)
  result['dpm_solver_3m'] = {
      nfe: sweep.run([{'method': 'dpm_solver', 'variant': '3M', 'nfe': nfe, 'eps': 1e-3}], sde,
                     score_fn, shape, key=key, quality=quality, repeats=1)[0]['sliced_w1']
      for nfe in FEWSTEP_NFES}
  print('dpm-solver++ 3M', result['dpm_solver_3m'], flush=True)
  result.update(_oracle_students(gmm, shape, key, tuning_key, quality))
  result['reflow'] = _oracle_reflow(gmm, shape, key, quality)
  if digits.get('teacher'):
    result['digits'] = _digits_fewstep(digits)
  return result


def _digits_fewstep(workdirs: dict, num_samples: int = 1000) -> dict:
  """FD-digits (and accuracy, for class-conditional runs) of the digits teacher's DPM-Solver++
  at 10 and 20 NFE and of its consistency students at 1 and 2 steps."""
  from score_sde import trained
  teacher = trained.load(workdirs['teacher'])
  quality_of = sweep.digits_quality(8, teacher.num_classes)
  shape = (num_samples, *teacher.data_shape)
  key, tuning_key = jax.random.PRNGKey(0), jax.random.PRNGKey(7)

  def quality_for(run):
    return lambda samples: quality_of(np.asarray(run.to_data(samples)))

  rows = {f'teacher dpm-solver++ 2M, {nfe} NFE': sweep.run(
      [{'method': 'dpm_solver', 'variant': '2M', 'nfe': nfe, 'eps': 1e-3}], teacher.sde,
      teacher.score_fn(), shape, key=key, quality=quality_for(teacher), repeats=1)[0]
      for nfe in (10, 20)}
  for name in ('cd', 'ict'):
    if workdirs.get(name):
      run = trained.load(workdirs[name])
      rows[name] = _student_rows(run.score_fn(), run.sde, shape, key, tuning_key,
                                 quality_for(run), (1, 2), 'fd_digits')
  print('digits', rows, flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('benchmark', choices=['likelihood', 'train', 'samplers',
                                            'stable_diffusion', 'latent', 'fewstep'])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=None,
                      help='likelihood / train: 16; samplers: 100000; latent: 64')
  parser.add_argument('--size', type=int, default=16)
  parser.add_argument('--steps', type=int, default=None,
                      help='train: steps per timed run (5); stable_diffusion: denoising steps '
                      '(50); latent: steps per timed run (20)')
  parser.add_argument('--batches', default='1,8', help='stable_diffusion on a GPU: batch sizes')
  for name in ('teacher', 'cd', 'ict'):
    parser.add_argument(f'--digits-{name}', default=None,
                        help=f'fewstep: workdir of the digits {name} run')
  args = parser.parse_args()
  if args.benchmark == 'stable_diffusion':
    result = benchmark_stable_diffusion(args.repeats, args.steps or 50,
                                        [int(b) for b in args.batches.split(',')])
  elif args.benchmark == 'fewstep':
    result = benchmark_fewstep(args.batch or 20_000,
                               {'teacher': args.digits_teacher, 'cd': args.digits_cd,
                                'ict': args.digits_ict})
  elif args.benchmark == 'latent':
    result = benchmark_latent(args.repeats, args.steps or 20, args.batch or 64)
  elif args.benchmark == 'samplers':
    result = benchmark_samplers(args.repeats, args.batch or 100_000)
  elif args.benchmark == 'likelihood':
    result = benchmark_likelihood(args.repeats, args.batch or 16, args.size)
  else:
    result = benchmark_train(args.repeats, args.batch or 16, args.size, args.steps or 5)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
