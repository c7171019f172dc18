"""Train-step numerics found wrong by a sweep against independent references (T5X's
Adafactor, optax schedules, the config contract): each test failed before its fix.
"""
import re

import jax
import numpy as np
import pytest

from configs import base, default
from t5x_lite import optim, partitioning, trainer as trainer_lib, validation
from tiny_run import tiny_config


# ------------------------------------------------- Adafactor on scanned (stacked) layers
def _adafactor_cfg():
  cfg = base.get_base_config()
  cfg.optimizer.update(dict(name='adafactor', schedule='constant', learning_rate=0.01))
  return cfg.optimizer


def test_scanned_adafactor_clips_and_scales_each_layer_like_unscanned():
  """T5X's Adafactor treats a scanned stack's `layers` axis as a batch axis (its
  `standard_logical_factor_rules`: 'layers': FactorDim.BATCH): update clipping, the
  parameter scale and the factored statistics are per layer. So a scanned model must take
  exactly the unscanned model's steps. Before the fix the RMS for clipping and the
  parameter scale were taken over the whole [layers, ...] array."""
  rng = np.random.RandomState(0)
  shapes = {('mlp', 'wi_0', 'kernel'): (128, 130),            # factored
            ('self_attention', 'query', 'kernel'): (16, 2, 8),  # matrix view, unfactored
            ('pre_mlp_norm', 'scale'): (16,)}                 # vector
  layer_scale = (1.0, 1e-2)  # very different parameter RMS per layer
  layers = [{}, {}]
  for i, s in enumerate(layer_scale):
    for path, shape in shapes.items():
      layers[i][path] = (rng.normal(size=shape) * s).astype(np.float32)

  def nest(flat):
    out = {}
    for path, x in flat.items():
      node = out
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = x
    return out

  def unscanned(per_layer):
    return {'decoder': {f'layers_{i}': nest(l) for i, l in enumerate(per_layer)}}

  def scanned(per_layer):
    return {'decoder': {'layers': nest({p: np.stack([l[p] for l in per_layer])
                                        for p in per_layer[0]})}}

  tx = optim.create(_adafactor_cfg(), 10)
  p_u, p_s = unscanned(layers), scanned(layers)
  s_u, s_s = tx.init(p_u), tx.init(p_s)
  for step, scales in enumerate([(1.0, 1.0), (1.0, 30.0), (0.1, 3.0)]):
    grads = [{p: (rng.normal(size=x.shape) * g).astype(np.float32) for p, x in l.items()}
             for l, g in zip(layers, scales)]
    u_u, s_u = tx.update(unscanned(grads), s_u, p_u)
    u_s, s_s = tx.update(scanned(grads), s_s, p_s)
    for i in range(2):
      for path in shapes:
        got, want = u_s['decoder']['layers'], u_u['decoder'][f'layers_{i}']
        for k in path:
          got, want = got[k], want[k]
        np.testing.assert_allclose(np.asarray(got)[i], np.asarray(want), rtol=1e-5,
                                   atol=1e-9, err_msg=f'step {step} layer {i} {path}')
    p_u = jax.tree.map(lambda p, u: p + u, p_u, u_u)
    p_s = jax.tree.map(lambda p, u: p + u, p_s, u_s)


@pytest.mark.parametrize('name', ['t5', 'gpt', 'bert', 't5_decoder'])
def test_scanned_models_name_their_stacks_layers(name):
  """optim.layer_rms finds a stack by the `layers` path name: in a scanned model the leaves
  under it carry the leading layer axis; an unscanned model has no such name."""
  import flax.linen as nn
  from t5x_lite import models, tree_paths
  for scan in (False, True):
    cfg = tiny_config(name, layers=3, scan_layers=scan)
    params = nn.unbox(models.abstract_params(models.ModelConfig.from_config(cfg.model)))
    stacked = [(names, x.shape) for names, x in tree_paths.named_leaves(params)
               if 'layers' in names]
    if scan:
      assert stacked and all(shape[0] == 3 for _, shape in stacked), stacked
    else:
      assert not stacked, stacked


# --------------------------------------------- learning_rate metric after a skipped step
def _synthetic_decoder_batch(batch=4, length=16, vocab=1152, seed=0):
  rng = np.random.RandomState(seed)
  targets = rng.randint(2, vocab - 100, size=(batch, length)).astype(np.int32)
  inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {'decoder_target_tokens': targets, 'decoder_input_tokens': inputs,
          'decoder_loss_weights': np.ones_like(targets)}


def test_learning_rate_metric_is_the_rate_applied_after_a_skipped_step():
  """A non-finite step keeps the optimizer state, schedule count included, while the train
  step counter moves on. The logged learning_rate must be the rate the update used: before
  the fix it was schedule(step), one warmup step ahead of the rate applied (here 2.5e-3
  logged while the update used 0 and left every parameter unchanged)."""
  peak, warmup = 1e-2, 4
  cfg = tiny_config('gpt', layers=1, data=dict(objective='causal_lm', targets_length=16),
                    train=dict(batch_size=4, steps=100, on_nonfinite='skip'))
  cfg.optimizer.update(dict(name='adamw', schedule='cosine', learning_rate=peak,
                            warmup_steps=warmup, decay_steps=100, weight_decay=0.0,
                            clip_grad_norm=0.0))
  mesh = partitioning.create_mesh(cfg.partitioning, jax.devices()[:1])
  trainer = trainer_lib.Trainer(cfg, mesh)
  batch = trainer.shard_batch(_synthetic_decoder_batch())
  state = trainer.init_state(0)
  good = jax.device_get(state.params)
  leaves, treedef = jax.tree.flatten(good)
  bad = jax.tree.unflatten(treedef, [np.full_like(leaves[0], np.nan)] + leaves[1:])

  state, m = trainer.train_step(state.replace(params=jax.device_put(bad)), batch,
                                jax.random.PRNGKey(0))
  assert not bool(m['finite']) and int(state.step) == 1
  state, m = trainer.train_step(state.replace(params=jax.device_put(good)), batch,
                                jax.random.PRNGKey(0))
  assert bool(m['finite'])
  # Adam's first applied step moves each entry with a non-negligible gradient by ~lr.
  moved = max(float(np.abs(np.asarray(a) - b).max())
              for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), leaves))
  np.testing.assert_allclose(float(m['learning_rate']), moved, rtol=1e-3, atol=1e-9)


# --------------------------------------------------------- bad numbers: named up front
@pytest.mark.parametrize('section,field,value,message', [
    ('optimizer', 'learning_rate', float('inf'), 'config.optimizer.learning_rate=inf'),
    ('optimizer', 'learning_rate', float('nan'), 'config.optimizer.learning_rate=nan'),
    ('optimizer', 'decay_steps', -5, 'config.optimizer.decay_steps=-5'),
    ('optimizer', 'clip_grad_norm', float('nan'), 'config.optimizer.clip_grad_norm'),
    ('optimizer', 'weight_decay', float('nan'), 'config.optimizer.weight_decay'),
    ('optimizer', 'z_loss', float('nan'), 'config.optimizer.z_loss=nan'),
    ('optimizer', 'z_loss', float('inf'), 'config.optimizer.z_loss=inf'),
    ('train', 'loss_normalization', 'mean', "config.train.loss_normalization='mean'"),
    ('train', 'loss_normalization_constant', float('inf'),
     'config.train.loss_normalization_constant'),
])
def test_bad_numbers_are_named_before_compiling(section, field, value, message):
  cfg = default.get_config()
  if field == 'loss_normalization_constant':
    cfg.train.loss_normalization = 'constant'
  cfg[section][field] = value
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    validation.validate_config(cfg, num_devices=1, data=False)
  assert '\n' not in str(e.value)


def test_cosine_decay_steps_not_after_warmup_is_named():
  """An explicit cosine decay_steps <= warmup_steps was silently moved to warmup_steps + 1
  (a schedule other than the one configured)."""
  cfg = default.get_config()
  cfg.optimizer.update(dict(schedule='cosine', warmup_steps=100, decay_steps=50))
  with pytest.raises(ValueError, match=re.escape('config.optimizer.decay_steps=50')):
    validation.validate_config(cfg, num_devices=1, data=False)
  with pytest.raises(ValueError, match=re.escape('config.optimizer.decay_steps=50')):
    optim.schedule(cfg.optimizer, 1000)
