"""Input-pipeline throughput beside a T5 v1.1 small train step's appetite, and their ratio
(what is timed, and the generated-corpus mode: docs/cli.md):

    python -m t5x_lite.data.bench [--seconds=10] [--corpus_gb=1 --corpus_files=8]
"""
import os
import random
import tempfile
import time

from absl import flags

from t5x_lite import cli

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, so importing this module has no side effects."""
  flags.DEFINE_float('seconds', 10.0, 'How long to run the pipeline.')
  flags.DEFINE_integer('batch_size', 32, 'Pipeline rows per batch.')
  flags.DEFINE_integer('model_batch_size', 4, 'Rows per train step.')
  flags.DEFINE_integer('model_steps', 2, 'Timed train steps (0: skip the model).')
  flags.DEFINE_integer('inputs_length', 512, 'Encoder length.')
  flags.DEFINE_integer('targets_length', 114, 'Decoder length.')
  flags.DEFINE_float('corpus_gb', 0.0, 'Generate and stream a corpus of this size (0: shipped).')
  flags.DEFINE_integer('corpus_files', 8, 'Files of the generated corpus (= virtual shards).')


def generate_corpus(directory: str, gigabytes: float, files: int) -> str:
  """Writes `files` text files totalling `gigabytes` under `directory`; returns their glob."""
  from t5x_lite.data import vocab as vocab_lib
  per_file = int(gigabytes * 2**30 / files)
  with open(vocab_lib.resolve_path('data/corpus/train.txt'), encoding='utf-8') as f:
    docs = [d.strip().encode() for d in f.read().split('\n\n') if d.strip()]
  for i in range(files):
    rng, written = random.Random(i), 0
    with open(os.path.join(directory, f'part-{i:03d}.txt'), 'wb') as f:
      while written < per_file:
        rng.shuffle(docs)
        chunk = b'\n\n'.join(docs)[:per_file - written] + b'\n\n'
        f.write(chunk)
        written += len(chunk)
  return os.path.join(directory, '*.txt')


def main():
  for name in ('seconds', 'batch_size', 'model_batch_size', 'inputs_length', 'targets_length',
               'corpus_files'):
    if not getattr(FLAGS, name) > 0:
      raise ValueError(f'--{name}={getattr(FLAGS, name)} must be above 0.')
  for name, zero in (('model_steps', 'skip the model'), ('corpus_gb', 'the shipped corpus')):
    if not getattr(FLAGS, name) >= 0:  # (NaN too)
      raise ValueError(f'--{name}={getattr(FLAGS, name)} must be >= 0 (0: {zero}).')
  from t5x_lite import throughput
  args = (FLAGS.seconds, FLAGS.batch_size, FLAGS.model_batch_size, FLAGS.model_steps,
          FLAGS.inputs_length, FLAGS.targets_length)
  if FLAGS.corpus_gb <= 0:
    throughput.pipeline_vs_train_step(*args)
    return
  with tempfile.TemporaryDirectory(prefix='t5x_lite_bench_corpus_') as directory:
    t0 = time.perf_counter()
    source = generate_corpus(directory, FLAGS.corpus_gb, FLAGS.corpus_files)
    print(f'corpus: {FLAGS.corpus_gb:g} GB in {FLAGS.corpus_files} files under {directory} '
          f'(written in {time.perf_counter() - t0:.1f} s; deleted afterwards)')
    throughput.pipeline_vs_train_step(*args, train_source='text:' + source,
                                      num_virtual_shards=FLAGS.corpus_files)


if __name__ == '__main__':
  _define_flags()
  cli.run(main, needs_workdir=False)
