"""Converts an official score_sde checkpoint into an orbax checkpoint that training resumes from.

  python scripts/convert_checkpoint.py --config CONFIG.py --checkpoint FILE --workdir DIR
      [--format jax|torch] [--use ema|raw]

Reads the official JAX code's flax msgpack `checkpoint_<n>` or the PyTorch port's torch.save
file (models ncsnpp and ddpm; torch is not needed), checks every parameter against the model of
--config, and writes <workdir>/checkpoints/<step> at the official training step. Afterwards
`score-sde --config ... --workdir ... --mode train|eval|sample` picks it up. --use chooses what
sampling and evaluation use (the EMA parameters by default, as in the paper); training continues
from the raw parameters and the official Adam moments either way.
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The config the checkpoint was trained with.',
                                lock_config=True)
flags.DEFINE_string('checkpoint', None, 'The official checkpoint file.')
flags.DEFINE_enum('format', None, ['jax', 'torch'], 'Its format; detected if not given.')
flags.DEFINE_string('workdir', None, 'Run directory to write the converted checkpoint into.')
flags.DEFINE_enum('use', 'ema', ['ema', 'raw'],
                  'Which parameters become the EMA copy that sampling and evaluation use.')
flags.mark_flags_as_required(['config', 'checkpoint', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from score_sde import official_checkpoints  # here, so that --help answers without JAX

  try:
    step = official_checkpoints.convert_to_workdir(FLAGS.config, FLAGS.checkpoint, FLAGS.workdir,
                                                   fmt=FLAGS.format, use=FLAGS.use)
  except ValueError as error:  # a mismatch or refusal: the message says it all
    raise SystemExit(f'convert_checkpoint: {error}') from None
  print(f'Wrote step {step} of {FLAGS.checkpoint} into {FLAGS.workdir}/checkpoints '
        f'(EMA from the {FLAGS.use} parameters).')


if __name__ == '__main__':
  app.run(main)
