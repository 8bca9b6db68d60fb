"""Command-line entry point (console script `score-sde`).

  score-sde --config configs/toy/vp.py --workdir runs/vp --mode train
  score-sde --config configs/toy/vp.py --workdir runs/vp --mode eval --eval_folder eval
  score-sde --config configs/toy/vp.py --config.training.batch_size=64 ...   (field overrides)
  score-sde --mode generate --config configs/latent/sd15.py --workdir runs/sd \
      --config.latent.checkpoint=PATH --prompt "a watercolour of a fox"   (Stable Diffusion)

Without --config the embedded default configs/toy/vp.py is used.

Several hosts: start the same command on each with --coordinator_address=host:port
--num_processes=N --process_id=i (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment variables); every device of every host then trains one data-parallel
model. The workdir must be on a file system all hosts share.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

import configs

DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), 'toy', 'vp.py')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample', 'generate'],
                  'What to run (generate: text-to-image with a Stable Diffusion checkpoint).')
flags.DEFINE_multi_string('prompt', [], '--mode generate: a prompt; repeat the flag for several.')
flags.DEFINE_string('eval_folder', 'eval', 'Sub-directory of workdir for eval/sample outputs.')
flags.DEFINE_float('watch_timeout', 0.0, '--mode eval: seconds to wait for a checkpoint of the '
                   'eval.begin_ckpt..end_ckpt range that training has not written yet (0: none).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host runs: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host runs: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host runs: index of this process.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  # Imported here so that --help answers without loading JAX.
  from score_sde import parallel
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  from score_sde import config_checks, evaluate, generate, train

  config, workdir = FLAGS.config, FLAGS.workdir
  config_checks.all_fields_known(config)
  if FLAGS.prompt and FLAGS.mode != 'generate':
    raise app.UsageError(f'--prompt is for --mode generate, not --mode {FLAGS.mode}.')
  if FLAGS.mode == 'generate':
    generate.generate(config, workdir, FLAGS.prompt, FLAGS.eval_folder)
  elif FLAGS.mode == 'train':
    train.train(config, workdir)
    print(f'Training finished. Checkpoints: {os.path.join(workdir, "checkpoints")}; '
          f'metrics: {os.path.join(workdir, "metrics.jsonl")}; '
          f'snapshot samples: {os.path.join(workdir, "samples")}')
  elif FLAGS.mode == 'eval':
    evaluate.evaluate(config, workdir, FLAGS.eval_folder, watch_timeout=FLAGS.watch_timeout)
  else:
    evaluate.sample(config, workdir, FLAGS.eval_folder)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
