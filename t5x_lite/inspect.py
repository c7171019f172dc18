"""Print what the objective feeds the model, as JSONL; or, with --workdir, list a run's
checkpoints and whether each is intact (output formats: docs/cli.md):

    python -m t5x_lite.inspect --config=configs/default.py --split=train --n=3
    python -m t5x_lite.inspect --workdir=DIR
"""
import json
import os
import sys

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  cli.define_config_flag(None, 'Config file.', lock_config=True)
  flags.DEFINE_enum('split', 'train', ['train', 'validation'], 'Split.')
  flags.DEFINE_integer('n', 3, 'Rows to print.')
  flags.DEFINE_integer('shard_index', 0, 'Shard to read.')
  flags.DEFINE_integer('num_shards', 1, 'Number of shards.')
  flags.DEFINE_integer('seed', None, 'Data seed (default: config.data.seed).')
  flags.DEFINE_string('workdir', None, 'List this run\'s checkpoints and their status instead.')


def list_checkpoints(workdir: str) -> None:
  from t5x_lite import checkpoint_integrity
  if not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir} does not exist.')
  rows = checkpoint_integrity.listing(workdir)
  for row in rows:
    detail = f': {row["detail"]}' if row['detail'] and row['status'] == 'corrupt' else ''
    step = '?' if row['step'] is None else row['step']  # a stray entry of corrupt_checkpoints/
    print(f'step {step:>8}  {row["status"]}{detail}  {row["path"]}')
  if not any(r['status'].startswith('intact') for r in rows):
    raise ValueError(f'--workdir={workdir} has no usable checkpoint.')


def main():
  if FLAGS.workdir:
    return list_checkpoints(FLAGS.workdir)
  from t5x_lite.data import pipeline
  config = FLAGS.config
  if config is None:
    raise ValueError('--config (or --workdir) is required.')
  if FLAGS.n < 1:
    raise ValueError(f'--n={FLAGS.n} must be at least 1.')
  if FLAGS.num_shards < 1:
    raise ValueError(f'--num_shards={FLAGS.num_shards} must be at least 1.')
  # The batches this shard feeds in training (train.batch_size rows over its processes'
  # count, in blocks of rows per stream): their first --n rows, in order.
  it = pipeline.get_dataset(config, FLAGS.split, shard_index=FLAGS.shard_index,
                            num_shards=FLAGS.num_shards, seed=FLAGS.seed)
  from t5x_lite.data import rows
  printed = 0
  for batch in it:
    for row in rows.rows_as_json(batch, it.vocab)[:FLAGS.n - printed]:
      print(json.dumps(row, ensure_ascii=False))
      printed += 1
    if printed >= FLAGS.n:
      break
  if not printed:
    raise ValueError(f'the {FLAGS.split} split of shard {FLAGS.shard_index} is empty; '
                     f'{it.skips.summary()}.')
  print(it.skips.report() or it.skips.summary(), file=sys.stderr)  # what was read so far


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False, name='inspect')
