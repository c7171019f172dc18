"""`python -m t5x_lite.inspect`: print what the objective feeds the model, as JSONL.

    python -m t5x_lite.inspect --config=configs/default.py --split=train --n=3 \
        [--config.data.objective=mlm --config.model.family=encoder] [--shard_index=0 --num_shards=1]

One JSON object per row of the model's batch: for every feature its ids (trailing padding
cut), and for token features the decoded text of each packed example (sentinels render as
<extra_id_k>, the mask as [MASK], EOS as </s>). The skip report of the sources goes to stderr.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before anything imports TF
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # its banner; data ops are integer work

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  flags.DEFINE_enum('split', 'train', ['train', 'validation'], 'Split.')
  flags.DEFINE_integer('n', 3, 'Rows to print.')
  flags.DEFINE_integer('shard_index', 0, 'Shard to read.')
  flags.DEFINE_integer('num_shards', 1, 'Number of shards.')
  flags.DEFINE_integer('seed', None, 'Data seed (default: config.data.seed).')


def main(argv):
  del argv
  from t5x_lite.data import pipeline
  from t5x_lite.data.sources import DataError
  from t5x_lite.data.vocab import VocabError
  config = FLAGS.config
  if config is None:
    sys.exit('error: --config is required.')
  try:
    it = pipeline.get_dataset(config, FLAGS.split, shard_index=FLAGS.shard_index,
                              num_shards=FLAGS.num_shards, seed=FLAGS.seed, batch_size=FLAGS.n)
    batch = next(it)
  except (DataError, VocabError) as e:
    sys.exit(f'error: {e}')
  except StopIteration:
    sys.exit(f'error: the {FLAGS.split} split of shard {FLAGS.shard_index} is empty.')
  from t5x_lite.data import rows
  for row in rows.rows_as_json(batch, it.vocab):
    print(json.dumps(row, ensure_ascii=False))
  print(f'{it.skips.summary()}', file=sys.stderr)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
