"""Evaluation of an autoencoder run's checkpoint (--mode eval with training.method =
'autoencoder'): how well it reconstructs the test split.

Into workdir/<eval_folder>/step_<step>/ it writes, once each (a restarted evaluation reuses
them):

  reconstruction.npz   per test image: PSNR (dB) and SSIM (images of 11 x 11 pixels or more) of
                       the reconstruction against the image, and their Inception features when
                       the FID weights are present
  reconstructions.png  the first 32 test images, each beside its reconstruction
  report.json          the means and standard errors, the test reconstruction loss, and the
                       reconstruction FID (rFID: the Frechet distance between the features of
                       the reconstructions and of the images) with the Inception weights

Images are compared as stored: the reconstruction of the posterior mean, clipped to [0, 1] and
rounded to 8 bits, against the 8-bit test image.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_checks, datasets, eval_files, evaluation, image_quality, inception
from score_sde import parallel, plots

PICTURED_PAIRS = 32


class AutoencoderEvaluator:
  """Reports of an autoencoder run's checkpoints on `mesh`: `parts` are its
  autoencoder_training.AutoencoderParts, `batch_arrays` and `eval_losses` its Method's."""

  def __init__(self, config, mesh, parts, batch_arrays, eval_losses):
    self.config, self.mesh = config, mesh
    self.batch_size = config_checks.positive_int(config, 'eval.batch_size')
    parallel.per_process_batch(self.batch_size, 'eval.batch_size')
    self.batch_arrays = batch_arrays
    self.with_ssim = min(datasets.data_shape(config)[:2]) >= image_quality.SSIM_WINDOW
    self.features_of = None
    if config.eval.get('inception_weights') or os.environ.get(inception.ENV_WEIGHTS):
      self.features_of = inception.get_inception_fn(
          inception.load_inception(inception.inception_weights_path(config)))

    @jax.jit
    def reconstruct(params, images):
      """images (B, H, W, C) in [0, 1] -> 8-bit reconstructions in [0, 1]."""
      decoded = parts.autoencoder.apply({'params': params['autoencoder']}, 2.0 * images - 1.0)
      return jnp.round(jnp.clip((decoded + 1.0) / 2.0, 0.0, 1.0) * 255.0) / 255.0

    self.reconstruct = reconstruct
    self.loss = jax.jit(eval_losses)

  def _per_image(self, state) -> dict:
    """Per-image metrics over the whole test split, and the first pictured pairs."""
    num = datasets.num_examples(self.config, 'test')
    batch = eval_files.batch_for(num, self.batch_size)
    batches = datasets.get_dataset(self.config, 'test', batch // jax.process_count(),
                                   evaluation=True)
    columns = {'psnr': [], 'ssim': [], 'loss': [], 'pool_3': [], 'pool_3_reconstructed': []}
    pictured = []
    for data in batches:
      images = parallel.global_batch(self.mesh, data['x'])
      rebuilt = self.reconstruct(state.params, images)
      mask = parallel.to_host(parallel.global_batch(self.mesh, data['mask']))
      values = {'psnr': image_quality.psnr(rebuilt, images),
                'loss': self.loss(state, jax.random.PRNGKey(0),
                                  parallel.global_batch(self.mesh,
                                                        self.batch_arrays(data)))}
      if self.with_ssim:
        values['ssim'] = image_quality.ssim(rebuilt, images)
      if self.features_of is not None:
        values['pool_3'] = self.features_of(images)['pool_3']
        values['pool_3_reconstructed'] = self.features_of(rebuilt)['pool_3']
      for name, value in parallel.to_host(values).items():
        columns[name].append(value[mask])
      if sum(len(p) for p in pictured) < PICTURED_PAIRS:
        host = parallel.to_host({'x': images, 'y': rebuilt})
        pictured.append(np.stack([host['x'][mask], host['y'][mask]], axis=1))
    arrays = {name: np.concatenate(parts) for name, parts in columns.items() if parts}
    arrays['pictured'] = np.concatenate(pictured)[:PICTURED_PAIRS]
    return arrays

  def __call__(self, state, step: int, out: str) -> dict:
    """The report of the checkpoint `state` of `step`, its files written into `out`."""
    arrays = eval_files.npz_once(os.path.join(out, 'reconstruction.npz'),
                                 lambda: self._per_image(state))
    report = {'step': step, 'num_examples': len(arrays['psnr']),
              'test_reconstruction_loss': float(arrays['loss'].mean())}
    for name in ('psnr', 'ssim'):
      if name in arrays:
        values = arrays[name].astype(np.float64)
        report[name] = float(values.mean())
        report[f'{name}_standard_error'] = float(values.std(ddof=1) / np.sqrt(len(values)))
    if 'pool_3' in arrays:
      mu, sigma = evaluation.feature_statistics(arrays['pool_3'])
      mu_r, sigma_r = evaluation.feature_statistics(arrays['pool_3_reconstructed'])
      report['rfid'] = evaluation.frechet_distance(mu_r, sigma_r, mu, sigma)
    picture = os.path.join(out, 'reconstructions.png')
    pairs = arrays['pictured']
    if parallel.is_primary():
      plots.save_image_grid(picture, pairs.reshape(-1, *pairs.shape[2:]), columns=16)
    report['picture'] = picture
    report['report'] = os.path.join(out, 'report.json')
    return report
