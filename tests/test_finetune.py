"""Fine-tuning learns: a tiny T5 trained through the real text-to-text pipeline (jsonl
source, SentencePiece, tf.data) on a synthetic task it can only solve by attending to the
right input position (reverse three words) reaches >= 80% exact match on held-out inputs,
decoded greedily and with beam search, scored by t5x_lite.metrics (chance: ~0%).

With the relative-position tables initialised as t5x does (std ~0.24 here; they were N(0, 1)
before 2026-12-06) position is learned more slowly: 120 steps gave 19.5% (they had given
>= 90%), 200 steps 90.6% / 91.4% (greedy / beam), 260 89.1%, 300 85.9%."""
import itertools
import json
import random

import jax
import numpy as np

from configs import t5_v1_1
from t5x_lite import decoding, metrics, partitioning, trainer as trainer_lib
from t5x_lite.data import pipeline

STEPS = 200
WORDS = ('king queen lord lady duke love death night sword crown blood heart day sir good '
         'man').split()  # each one piece of the shipped 1k vocabulary


def _write(path, rows):
  with open(path, 'w') as f:
    for words in rows:
      f.write(json.dumps({'inputs': 'reverse: ' + ' '.join(words),
                          'targets': ' '.join(reversed(words))}) + '\n')


def _config(tmp_path):
  rows = list(itertools.product(WORDS, repeat=3))
  random.Random(0).shuffle(rows)
  _write(tmp_path / 'train.jsonl', rows[:3000])
  _write(tmp_path / 'validation.jsonl', rows[3000:3128])  # never seen in training
  cfg = t5_v1_1.get_config('tiny')
  cfg.model.update(dict(vocab_size=1152, d_model=64, d_ff=128, num_heads=4, d_kv=16,
                        num_encoder_layers=2, num_decoder_layers=2))
  cfg.data.update(dict(objective='text_to_text', inputs_length=8, targets_length=6,
                       pack=False, train_source=f'jsonl:{tmp_path}/train.jsonl',
                       validation_source=f'jsonl:{tmp_path}/validation.jsonl'))
  cfg.train.update(dict(steps=STEPS, batch_size=32, grad_accum_steps=1))
  cfg.optimizer.update(dict(name='adamw', schedule='constant', learning_rate=3e-3,
                            warmup_steps=0))
  return cfg


def test_tiny_t5_learns_a_held_out_word_reversal(tmp_path):
  cfg = _config(tmp_path)
  mesh = partitioning.create_mesh(cfg.partitioning, jax.devices()[:1])
  trainer = trainer_lib.Trainer(cfg, mesh)
  state = trainer.init_state(0)
  losses = []
  it = pipeline.get_dataset(cfg, 'train')
  for step in range(STEPS):
    state, m = trainer.train_step(state, trainer.shard_batch(next(it)), jax.random.PRNGKey(1))
    losses.append(float(m['loss']))
  params = jax.device_get(state.params)
  val = pipeline.get_dataset(cfg, 'validation')
  targets, greedy, beam = [], [], []
  for batch in val:
    real = batch['decoder_loss_weights'].sum(1) > 0
    b = {'encoder_input_tokens': batch['encoder_input_tokens']}
    g, _ = decoding.decode(trainer.model, params, b, 6)
    k, _ = decoding.decode(trainer.model, params, b, 6, beam_size=4)
    for r in np.nonzero(real)[0]:
      targets.append(val.vocab.decode(batch['decoder_target_tokens'][r]))
      greedy.append(val.vocab.decode(g[r]))
      beam.append(val.vocab.decode(k[r]))
  assert len(targets) == 128
  print(f'loss {losses[0]:.3f} -> {losses[-1]:.3f}; exact match greedy '
        f'{metrics.exact_match(targets, greedy):.1f}, beam {metrics.exact_match(targets, beam):.1f}')
  assert metrics.exact_match(targets, greedy) >= 80
  assert metrics.exact_match(targets, beam) >= 80
