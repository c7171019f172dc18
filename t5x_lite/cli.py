"""Command-line plumbing shared by every command (`python -m t5x_lite.<cmd>`).

Owns the flags every run command takes (`--config`, `--workdir`, `--num_cpu_devices`,
`--show_predictions`), quiet logging, and the error contract: a bad config or input is one
`error: ...` line on stderr and exit status 1, never a traceback. Commands are leaves: they
parse flags, call one library function and print; no module imports a command module
(tests/test_layering.py walks the imports).
Flags are defined by `define_common_flags()` when a module runs as a command, so importing
any of these modules has no side effects.
"""
import logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_common_flags():
  if 'workdir' in FLAGS:
    return
  config_flags.DEFINE_config_file('config', 'configs/default.py', 'Config file (get_config()).')
  flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, TensorBoard).')
  flags.DEFINE_integer('num_cpu_devices', 0, 'Fake CPU devices (tests, local multi-process).')
  flags.DEFINE_integer('show_predictions', 3, 'Print this many example predictions.')


def run(body, needs_workdir: bool = True, name: str = ''):
  """`app.run` a command body (no arguments) with the shared set-up and error contract;
  `name` prefixes the error line (`plan: error: ...`)."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    logging.basicConfig(level=logging.WARNING)
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and TF are chatty below that
    if needs_workdir and FLAGS.workdir is None:
      raise app.UsageError('--workdir is required.')
    if 'num_cpu_devices' in FLAGS and FLAGS.num_cpu_devices:
      import jax
      jax.config.update('jax_num_cpu_devices', FLAGS.num_cpu_devices)
    try:
      body()
    except (ValueError, OSError, FloatingPointError) as e:
      prefix = f'{name}: ' if name else ''
      print(f'{prefix}error: {e}'.replace('\n', ' '), file=sys.stderr, flush=True)
      sys.exit(1)
  app.run(main)
