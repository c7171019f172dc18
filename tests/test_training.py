"""Training: falling loss per family, equal losses across meshes and with gradient
accumulation, and the Adafactor update against the reference formula.

The CLI-level behaviour (resume after SIGKILL, 8 -> 1 device restore, signals, NaN, bad
input) is in test_train_cli.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
import pytest

from configs import base
from t5x_lite import models, optim, partitioning, trainer as trainer_lib, tree_paths
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
  metrics = []
  for b in batches[:n]:
    state, m = trainer.train_step(state, trainer.shard_batch(b), jax.random.PRNGKey(1))
    metrics.append(jax.device_get(m))
  losses = [float(m['loss']) for m in metrics]
  return losses, jax.device_get(state.params), batches, metrics


@pytest.mark.parametrize('name,make', [
    ('encoder_decoder span corruption', encoder_decoder_config),
    ('encoder MLM', lambda: tiny('bert', 'mlm', inputs_length=64)),
    ('decoder causal LM', lambda: tiny('gpt', 'causal_lm', targets_length=64)),
])
def test_loss_falls_on_shipped_corpus(name, make):
  cfg = make()
  cfg.optimizer.update(dict(name='adamw', schedule='constant', learning_rate=3e-3,
                            warmup_steps=0, weight_decay=0.0))
  losses, _, _, _ = run_steps(cfg, 40)
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert np.isfinite(losses).all()
  assert last < first - 0.5, f'{name}: loss did not fall: {losses[:5]} ... {losses[-5:]}'


def assert_same_run(got, want, name, params_atol=1e-7):
  """Equal losses and grad norms (rtol 2e-5) and params (rtol 1e-5) after the same steps.

  grad_norm matters: Adafactor and Adam updates barely depend on the gradient's scale, so a
  gradient off by a constant factor only shows there.
  """
  (losses, params, _, metrics), (ref, ref_params, _, ref_metrics) = got, want
  np.testing.assert_allclose(losses, ref, rtol=2e-5, err_msg=name)
  np.testing.assert_allclose([m['grad_norm'] for m in metrics],
                             [m['grad_norm'] for m in ref_metrics], rtol=2e-5, err_msg=name)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(ref_params)):
    name_path = jax.tree_util.keystr(path)
    if "['key']['bias']" in name_path:
      # softmax ignores a key bias: its true gradient is 0, and Adam scales the rounding
      # noise of that 0 up to a full step, so it differs between any two summation orders.
      continue
    # Summation-order noise scales with the tensor: an embedding row of entries ~1 can move
    # by 1.7e-7 between meshes (seen at XLA -O0, tests/conftest.py), a 3e-5 error on a small
    # entry of it; an entry of the logits kernel (RMS 0.18) by 3.3e-7 (1.9e-6 of its RMS:
    # Adafactor divides a nearly cancelled gradient by its second moment). So at least 3e-6
    # of the tensor's RMS; a sharding error moves entries by a good part of a step, ~1e-3.
    atol = max(params_atol, 3e-6 * float(np.sqrt(np.mean(np.square(np.asarray(b))))))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=f'{name}: {name_path}')


def test_same_losses_across_meshes_and_grad_accumulation():
  """1 device == data=8 == fsdp=8 == data=4 x tensor=2; 4 x (batch/4) == 1 x batch."""
  cfg = encoder_decoder_config()
  want = run_steps(cfg, 3)
  batches = want[2]
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
    assert_same_run(run_steps(cfg, 3, mesh_shape, jax.devices()[:n_dev], batches), want, name)


def test_grad_accumulation_with_adamw():
  """AdamW on a decoder: 4 x (batch/4) on data=2 == 1 x batch on one device."""
  def config(accum):
    cfg = tiny('gpt', 'causal_lm', targets_length=32)
    cfg.optimizer.update(dict(schedule='constant', learning_rate=1e-3, clip_grad_norm=0.0))
    cfg.train.grad_accum_steps = accum
    return cfg
  want = run_steps(config(1), 2)
  got = run_steps(config(4), 2, dict(data=2, fsdp=1, tensor=1), jax.devices()[:2], want[2])
  # Adam's first steps are about lr * sign(g): an entry whose gradient is within rounding of
  # 0 can move by up to 2 lr per step either way under another summation order, so each
  # entry is held to 2 lr x steps, and all but a rare few (<= 0.5%) to 1e-5; the gradient
  # itself is held to rtol 2e-5 through grad_norm. (A wrong microbatch gradient moves many
  # entries by ~lr, failing the second bound.)
  lr, steps = 1e-3, 2
  assert_same_run(got, want, 'AdamW, grad accumulation 4 on data=2',
                  params_atol=2 * lr * steps)
  diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                          zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]))])
  assert np.mean(diffs > 1e-5) <= 0.005, np.mean(diffs > 1e-5)


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


@pytest.mark.parametrize('weight_decay', [None, 0.1])
def test_adafactor_equals_optax_adafactor_and_keeps_its_state_tree(weight_decay):
  # optim.adafactor rebuilds optax.adafactor's chain with a one-pass parameter scale; the
  # updates must be optax's, also where the parameter scale's 1e-3 floor applies (RMS 1e-5),
  # and the state the same pytree (checkpoints written by either restore).
  rng = np.random.RandomState(1)
  # 'big' / 'tall' / 'stacked' are factored, with the column or row mean over a leading or
  # middle axis.
  params = {'big': rng.normal(size=(128, 160)).astype(np.float32),
            'tall': rng.normal(size=(160, 128)).astype(np.float32),
            'stacked': rng.normal(size=(2, 128, 160)).astype(np.float32),
            'tiny': (rng.normal(size=(6, 5)) * 1e-5).astype(np.float32),
            'vector': rng.normal(size=(7,)).astype(np.float32)}
  ours = optim.adafactor(0.01, weight_decay)
  optax_adafactor = lambda **mask: optax.adafactor(
      learning_rate=0.01, min_dim_size_to_factor=128, decay_rate=0.8, decay_offset=0,
      multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None, eps=1e-30,
      factored=True, weight_decay_rate=weight_decay, **mask)
  # Decay skips 'vector' (rank 1), as optax's weight_decay_mask does; the state stays the
  # unmasked pytree (optax's mask would wrap it in a MaskedState).
  theirs = optax_adafactor(weight_decay_mask=optim.decay_mask)
  state_ours, state_theirs = ours.init(params), theirs.init(params)
  assert (jax.tree_util.tree_structure(state_ours) ==
          jax.tree_util.tree_structure(optax_adafactor().init(params)))
  p_ours = p_theirs = params
  for step in range(4):
    grads = {k: rng.normal(size=v.shape).astype(np.float32) * (step + 1) for k, v in params.items()}
    u_ours, state_ours = jax.jit(ours.update)(grads, state_ours, p_ours)
    u_theirs, state_theirs = jax.jit(theirs.update)(grads, state_theirs, p_theirs)
    for k in params:
      # atol: with weight decay an update can cancel to ~0 (updates here are ~1e-2).
      np.testing.assert_allclose(np.asarray(u_ours[k]), np.asarray(u_theirs[k]), rtol=2e-6,
                                 atol=1e-8, err_msg=f'{k} step {step}')
    for stat in ('v_row', 'v_col', 'v'):
      for k in params:
        np.testing.assert_allclose(
            np.asarray(getattr(state_ours[0], stat)[k]),
            np.asarray(getattr(state_theirs[0], stat)[k]), rtol=2e-6, atol=0,
            err_msg=f'{stat} {k} step {step}')
    p_ours = optax.apply_updates(p_ours, u_ours)
    p_theirs = optax.apply_updates(p_theirs, u_theirs)
  assert np.abs(np.asarray(u_ours['tiny'])).max() > 0


def _decay_expected(name):
  """Which parameters weight decay shrinks, by name (HF run_clm / run_mlm: not LayerNorm, not
  bias): True for weight matrices, False for norm scales and biases."""
  leaf = name.rsplit('/', 1)[-1]
  assert leaf in ('kernel', 'embedding', 'rel_embedding', 'scale', 'bias', 'mlm_bias'), name
  return leaf in ('kernel', 'embedding', 'rel_embedding')


@pytest.mark.parametrize('scan_layers', [False, True])
@pytest.mark.parametrize('family,opt', [('gpt', 'adamw'), ('bert', 'adamw'),
                                        ('t5', 'adafactor')])
def test_weight_decay_spares_norm_scales_and_biases(family, opt, scan_layers):
  """One update with zero gradients is weight decay alone: kernels and embeddings shrink by
  (1 - lr * wd) (AdamW) or (1 - wd) (Adafactor: optax adds decay after the learning rate);
  norm scales and biases, [heads, d_kv] attention biases and scanned [layers, d] scales
  included, stay. AdamW's state keeps optax.adamw's pytree (checkpoints restore)."""
  lr, wd = 0.01, 0.1
  cfg = tiny_config(family, scan_layers=scan_layers)
  cfg.optimizer.update(dict(name=opt, schedule='constant', learning_rate=lr, warmup_steps=0,
                            weight_decay=wd, clip_grad_norm=0.0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        nn.unbox(models.abstract_params(cfg.model)))
  tx = optim.create(cfg.optimizer, 10)
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), state, params)
  new = optax.apply_updates(params, updates)
  shrink = 1 - lr * wd if opt == 'adamw' else 1 - wd
  names = [('/'.join(k), x) for k, x in tree_paths.named_leaves(params)]
  assert any('layers' in n.split('/') for n, _ in names) == scan_layers
  for (name, p), q in zip(names, jax.tree.leaves(new)):
    if _decay_expected(name):
      np.testing.assert_allclose(q, shrink * p, rtol=1e-6, err_msg=name)
    else:
      np.testing.assert_array_equal(q, p, err_msg=name)
  if opt == 'adamw':
    assert (jax.tree_util.tree_structure(state) ==
            jax.tree_util.tree_structure(optax.adamw(
                optim.schedule(cfg.optimizer, 10), weight_decay=wd).init(params)))


def test_rsqrt_schedule_is_t5s():
  cfg = base.get_base_config()  # T5 defaults: peak 0.01, warmup 10k
  sched = optim.schedule(cfg.optimizer, 100000)
  for step, want in [(1, 0.01), (5000, 0.01), (10000, 0.01), (40000, 0.005),
                     (1000000, 0.001)]:
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6)
  cfg.optimizer.min_learning_rate = 0.004  # a floor: rsqrt decays no lower
  sched = optim.schedule(cfg.optimizer, 100000)
  for step, want in [(1, 0.01), (40000, 0.005), (62500, 0.004), (1000000, 0.004)]:
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


# ------------------------------------------- AdamW, clipping, cosine, weight decay, smoothing
def _smoothed_loss(logits, targets, weights, smoothing, z_loss):
  """Label-smoothed cross-entropy + z-loss, mean over real tokens, written out from the
  definition (t5x: (1 - s) on the target, s / (V - 1) elsewhere, minus that distribution's
  entropy so a perfect prediction scores 0)."""
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  logp = logits - log_z[..., None]
  on = 1.0 - smoothing
  off = smoothing / (vocab - 1)
  logp_target = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  cross = -(on * logp_target + off * (jnp.sum(logp, axis=-1) - logp_target))
  entropy = -(on * np.log(on) + (vocab - 1) * off * np.log(off))
  per_token = cross - entropy + z_loss * log_z ** 2
  return jnp.sum(per_token * weights) / jnp.sum(weights)


def _cosine_lr(step, peak, warmup, decay_steps, floor):
  if step < warmup:
    return peak * step / warmup
  progress = min(step - warmup, decay_steps - warmup) / (decay_steps - warmup)
  return floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * progress))


def test_adamw_clipping_cosine_weight_decay_label_smoothing_match_numpy():
  """Four train steps against an independent computation: the loss and its gradient from
  the definition above, global-norm clipping, the warmup-cosine learning rate and AdamW with
  decoupled weight decay (weight matrices only) in float64 numpy."""
  peak, warmup, decay_steps, wd, smoothing, z_loss, b1, b2 = 1e-2, 2, 4, 1.0, 0.1, 1e-4, 0.9, 0.99
  floor = 4e-3  # the cosine's min_learning_rate: step 3 is on the cosine, step 4 on the floor
  cfg = tiny('gpt', 'causal_lm', targets_length=32)
  cfg.train.update(dict(steps=8, label_smoothing=smoothing))
  cfg.optimizer.z_loss = z_loss
  cfg.optimizer.update(dict(name='adamw', schedule='cosine', learning_rate=peak,
                            warmup_steps=warmup, decay_steps=decay_steps, weight_decay=wd,
                            b1=b1, b2=b2, min_learning_rate=floor))
  it = pipeline.get_dataset(cfg, 'train')
  batches = [next(it) for _ in range(5)]
  mesh = partitioning.create_mesh(cfg.partitioning, jax.devices()[:1])
  unclipped = trainer_lib.Trainer(cfg, mesh)

  def ref_loss(params, b):
    logits = unclipped.model.apply({'params': params}, b, deterministic=True)
    return _smoothed_loss(logits, b['decoder_target_tokens'],
                          b['decoder_loss_weights'].astype(jnp.float32), smoothing, z_loss)
  ref_grad = jax.jit(jax.value_and_grad(ref_loss))

  # Clip at half the first gradient norm, so that clipping acts.
  first = jax.device_get(unclipped.init_state(cfg.train.seed).params)
  cfg.optimizer.clip_grad_norm = clip = 0.5 * float(
      optax.tree.norm(ref_grad(first, batches[0])[1]))
  trainer = trainer_lib.Trainer(cfg, mesh)
  state = trainer.init_state(cfg.train.seed)

  p = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(state.params))
  p0 = p
  decay = jax.tree.unflatten(jax.tree.structure(p), [  # wd on weight matrices only
      wd * _decay_expected('/'.join(k)) for k, _ in tree_paths.named_leaves(p)])
  m = jax.tree.map(np.zeros_like, p)
  v = jax.tree.map(np.zeros_like, p)
  for t, b in enumerate(batches):
    state, metrics = trainer.train_step(state, trainer.shard_batch(b), jax.random.PRNGKey(0))
    loss, g = ref_grad(jax.tree.map(lambda x: x.astype(np.float32), p), b)
    g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
    norm = np.sqrt(sum(np.sum(x ** 2) for x in jax.tree.leaves(g)))
    lr = _cosine_lr(t, peak, warmup, decay_steps, floor)
    np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=1e-5, err_msg=t)
    np.testing.assert_allclose(float(metrics['grad_norm']), norm, rtol=1e-5, err_msg=t)
    np.testing.assert_allclose(float(metrics['learning_rate']), lr, rtol=1e-6, atol=1e-12,
                               err_msg=t)
    assert norm > clip, (t, norm, clip)
    g = jax.tree.map(lambda x: x * min(1.0, clip / norm), g)
    m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
    v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ ** 2, v, g)
    p = jax.tree.map(
        lambda p_, m_, v_, d: p_ - lr * ((m_ / (1 - b1 ** (t + 1))) /
                                         (np.sqrt(v_ / (1 - b2 ** (t + 1))) + 1e-8) + d * p_),
        p, m, v, decay)

  # Compare the total update per parameter by its norm: Adam turns rounding noise in a
  # near-zero gradient entry into a step of about lr, so single entries may differ.
  got = jax.device_get(state.params)
  for (path, a), want, start in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                                    jax.tree.leaves(p), jax.tree.leaves(p0)):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      continue  # true gradient 0 (softmax ignores it): its Adam step is rounding noise
    err = np.linalg.norm(a - want) / np.linalg.norm(want - start)
    assert err < 1e-3, (name, err)
