"""Training: falling loss per family, equal losses across meshes and with gradient
accumulation, and the Adafactor update against the reference formula.

The CLI-level behaviour (resume after SIGKILL, 8 -> 1 device restore, signals, NaN, bad
input) is in test_train_cli.py.
"""
import jax
import numpy as np
import pytest

from configs import base
from t5x_lite import optim, partitioning, trainer as trainer_lib
from t5x_lite.data import pipeline
from tiny_run import tiny_config


def tiny(name, objective, **data):
  """A seconds-long CPU run on the shipped corpus."""
  return tiny_config(name, data=dict(objective=objective, **data),
                     train=dict(batch_size=8, grad_accum_steps=1))


def encoder_decoder_config():
  return tiny('t5', 'span_corruption', inputs_length=64, targets_length=14)


def run_steps(cfg, n, mesh_shape=None, devices=None, batches=None):
  if mesh_shape:
    cfg.partitioning.mesh.update(mesh_shape)
  devices = devices or jax.devices()[:1]
  mesh = partitioning.create_mesh(cfg.partitioning, devices)
  trainer = trainer_lib.Trainer(cfg, mesh)
  state = trainer.init_state(cfg.train.seed)
  if batches is None:
    it = pipeline.get_dataset(cfg, 'train')
    batches = [next(it) for _ in range(n)]
  losses = []
  for b in batches[:n]:
    state, m = trainer.train_step(state, trainer.shard_batch(b), jax.random.PRNGKey(1))
    losses.append(float(m['loss']))
  return losses, jax.device_get(state.params), batches


@pytest.mark.parametrize('name,make', [
    ('encoder_decoder span corruption', encoder_decoder_config),
    ('encoder MLM', lambda: tiny('bert', 'mlm', inputs_length=64)),
    ('decoder causal LM', lambda: tiny('gpt', 'causal_lm', targets_length=64)),
])
def test_loss_falls_on_shipped_corpus(name, make):
  cfg = make()
  cfg.optimizer.update(dict(name='adamw', schedule='constant', learning_rate=3e-3,
                            warmup_steps=0, weight_decay=0.0))
  losses, _, _ = run_steps(cfg, 40)
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert np.isfinite(losses).all()
  assert last < first - 0.5, f'{name}: loss did not fall: {losses[:5]} ... {losses[-5:]}'


def test_same_losses_across_meshes_and_grad_accumulation():
  """1 device == data=8 == fsdp=8 == data=4 x tensor=2; 4 x (batch/4) == 1 x batch."""
  cfg = encoder_decoder_config()
  ref, ref_params, batches = run_steps(cfg, 3)
  runs = {
      'data=8': (dict(data=8, fsdp=1, tensor=1), 1),
      'fsdp=8': (dict(data=1, fsdp=8, tensor=1), 1),
      'data=4 x tensor=2': (dict(data=4, fsdp=1, tensor=2), 1),
      'grad accumulation 4': (dict(data=1, fsdp=1, tensor=1), 4),
  }
  for name, (mesh_shape, accum) in runs.items():
    cfg = encoder_decoder_config()
    cfg.train.grad_accum_steps = accum
    n_dev = int(np.prod(list(mesh_shape.values())))
    losses, params, _ = run_steps(cfg, 3, mesh_shape, jax.devices()[:n_dev], batches)
    np.testing.assert_allclose(losses, ref, rtol=2e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=name)


def _adafactor_reference(param, grads, lr):
  """Adafactor from its definition (docs/t5.md §6; Shazeer & Stern), in float64.

  Step t: decay 1 - t^-0.8; g2 = g^2 + eps1 (1e-30). Rank-2 params whose dims are both
  >= 128 keep row / column means r, c of g2 (each decayed), v = outer(r, c) / mean(r);
  others keep v itself. u = g / sqrt(v); u /= max(1, RMS(u) / 1.0) (update clipping);
  param -= lr * max(1e-3, RMS(param)) * u (parameter-scaled step, eps2 = 1e-3).
  """
  param = param.astype(np.float64)
  factored = min(param.shape) >= 128
  r = c = v = 0.0
  for t, grad in enumerate(grads, start=1):
    grad = grad.astype(np.float64)
    decay = 1.0 - t ** -0.8
    g2 = grad ** 2 + 1e-30
    if factored:
      r = decay * r + (1 - decay) * g2.mean(axis=1)
      c = decay * c + (1 - decay) * g2.mean(axis=0)
      v_hat = np.outer(r, c) / r.mean()
    else:
      v = decay * v + (1 - decay) * g2
      v_hat = v
    u = grad / np.sqrt(v_hat)
    u = u / max(1.0, np.sqrt(np.mean(u ** 2)) / 1.0)
    param = param - lr * max(1e-3, np.sqrt(np.mean(param ** 2))) * u
  return param


@pytest.mark.parametrize('name,shape', [
    ('w', (3, 4)),                  # unfactored; clipping acts from step 2 on
    ('w', (128, 130)),              # factored
    ('query', (130, 2, 64)),        # attention kernel: factored as T5's [130, 128] matrix
])
def test_adafactor_steps_match_reference_formula(name, shape):
  cfg = base.get_base_config()
  cfg.optimizer.update(dict(name='adafactor', schedule='constant', learning_rate=0.01))
  tx = optim.create(cfg.optimizer, 10)
  rng = np.random.RandomState(0)
  param = rng.normal(size=shape).astype(np.float32)
  grads = [rng.normal(size=shape).astype(np.float32) * s for s in (1.0, 0.1, 3.0)]
  tree = lambda x: {name: {'kernel': x}}
  state, got = tx.init(tree(param)), param
  for g in grads:
    updates, state = tx.update(tree(g), state, tree(got))
    got = got + np.asarray(updates[name]['kernel'])
  matrix = lambda x: x.reshape(x.shape[0], -1)
  want = _adafactor_reference(matrix(param), [matrix(g) for g in grads], 0.01)
  np.testing.assert_allclose(matrix(got), want, rtol=2e-5, atol=1e-6)


def test_rsqrt_schedule_is_t5s():
  cfg = base.get_base_config()  # T5 defaults: peak 0.01, warmup 10k
  sched = optim.schedule(cfg.optimizer, 100000)
  for step, want in [(1, 0.01), (5000, 0.01), (10000, 0.01), (40000, 0.005),
                     (1000000, 0.001)]:
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6)


def test_optimizer_state_is_sharded_like_params():
  """Adam moments share their param's spec; Adafactor row/col moments keep a dim's spec."""
  cfg = encoder_decoder_config()
  cfg.model.update(dict(d_model=128, d_ff=256))
  cfg.partitioning.mesh.update(dict(data=1, fsdp=8, tensor=1))
  mesh = partitioning.create_mesh(cfg.partitioning, jax.devices()[:8])
  trainer = trainer_lib.Trainer(cfg, mesh)
  opt = trainer.state_shardings.opt_state
  specs = {jax.tree_util.keystr(p): s.spec
           for p, s in jax.tree_util.tree_flatten_with_path(opt)[0]}
  wi = [v for k, v in specs.items() if "'encoder'" in k and "'wi_0'" in k]
  # wi_0 kernel [embed=128 -> fsdp, mlp=256 -> tensor (size 1)] is factored (both >= 128):
  # the row statistic keeps `embed` (fsdp), the column statistic keeps `mlp`.
  assert partitioning.P('fsdp') in [partitioning.P(*s) for s in wi], specs
