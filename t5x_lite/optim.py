"""Optimizers (optax) and learning-rate schedules, shardings for optimizer state, and the
warnings train prints at start about optimizer settings that would silently do little.

Adafactor with the T5 defaults (docs/t5.md §6): decay_rate 0.8, no momentum,
factored second moments for rank>=2 params whose two largest dims are >= 128,
multiply_by_parameter_scale, update clipping 1.0, eps1 1e-30, eps2 (parameter-scale floor)
1e-3, no weight decay. AdamW for BERT / GPT recipes.

Weight decay (AdamW's, and Adafactor's optional `weight_decay_rate`) applies only to weight
matrices: kernels, embeddings and T5's relative-position tables. Norm scales and biases are not
decayed: nanoGPT's rule (parameters of rank >= 2 decay, others not), which is also what HF's
run_clm / run_mlm (no LayerNorm, no bias) and the GPT-2 / BERT recipes do. The rank is the
unscanned one (a scanned stack's leading `layers` axis does not count), and attention biases,
stored [heads, d_kv], are biases (`decays`). The optimizer state keeps the pytree of
`optax.adamw` / `optax.adafactor` without a mask, so existing checkpoints restore.

T5 factors attention kernels as the matrices [d_model, heads * d_kv] / [heads * d_kv, d_model];
this codebase stores them as [embed, heads, kv] / [heads, kv, embed] (for logical-axis
sharding), where optax's rule (the two largest dims, both >= 128) would not factor them when
d_kv < 128. So Adafactor sees those kernels through `matrix_view`, as T5 does.

Schedules (`config.optimizer.schedule`):
    rsqrt:    lr = peak * sqrt(warmup / max(step, warmup))   (T5: peak 0.01, warmup 10k
              gives 1/sqrt(max(step, 10000)): constant 0.01, then inverse square root)
    cosine:   linear warmup 0 -> peak over `warmup_steps`, cosine down to
              `min_learning_rate` at `decay_steps`, held there after (nanoGPT: peak / 10)
    constant: lr = peak (fine-tuning: 1e-3)
`min_learning_rate` is a floor for every schedule after its warmup (rsqrt decays no lower;
constant never reaches it), so switching a config's schedule keeps it valid.
"""
import sys

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from t5x_lite import tree_paths

SCHEDULES = ('rsqrt', 'cosine', 'constant')
OPTIMIZERS = ('adafactor', 'adamw')
# AdamW's moment decays, the config's defaults (configs/base.py reads them from here).
ADAMW_B1, ADAMW_B2 = 0.9, 0.999


def validate(opt_cfg) -> None:
  if opt_cfg.name not in OPTIMIZERS:
    raise ValueError(f'config.optimizer.name={opt_cfg.name!r} must be one of '
                     f'{", ".join(OPTIMIZERS)}.')
  if opt_cfg.schedule not in SCHEDULES:
    raise ValueError(f'config.optimizer.schedule={opt_cfg.schedule!r} must be one of '
                     f'{", ".join(SCHEDULES)}.')
  if not opt_cfg.learning_rate > 0:
    raise ValueError(f'config.optimizer.learning_rate={opt_cfg.learning_rate} must be > 0.')
  if not opt_cfg.learning_rate < float('inf'):
    raise ValueError(f'config.optimizer.learning_rate={opt_cfg.learning_rate} must be finite.')
  if opt_cfg.warmup_steps < 0:
    raise ValueError(f'config.optimizer.warmup_steps={opt_cfg.warmup_steps} must be >= 0.')
  if opt_cfg.decay_steps < 0:
    raise ValueError(f'config.optimizer.decay_steps={opt_cfg.decay_steps} must be >= 0 '
                     '(0 = train.steps).')
  if not 0 <= opt_cfg.min_learning_rate <= opt_cfg.learning_rate:  # NaN fails too
    raise ValueError(f'config.optimizer.min_learning_rate={opt_cfg.min_learning_rate} must be '
                     f'in [0, optimizer.learning_rate={opt_cfg.learning_rate}].')
  if (opt_cfg.schedule == 'cosine' and opt_cfg.decay_steps and
      opt_cfg.decay_steps <= opt_cfg.warmup_steps):
    # optax's decay_steps counts the warmup: the cosine needs at least one step after it.
    raise ValueError(f'config.optimizer.decay_steps={opt_cfg.decay_steps} must be > '
                     f'optimizer.warmup_steps={opt_cfg.warmup_steps} (the cosine decays from '
                     'the end of the warmup to min_learning_rate at decay_steps, warmup '
                     'included).')


def schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  validate(opt_cfg)
  peak, warmup = float(opt_cfg.learning_rate), int(opt_cfg.warmup_steps)
  floor = float(opt_cfg.min_learning_rate)
  if opt_cfg.schedule == 'rsqrt':
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      return jnp.maximum(peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1))),
                         floor)
    return rsqrt
  if opt_cfg.schedule == 'cosine':
    decay_steps = int(opt_cfg.decay_steps or total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(decay_steps, warmup + 1),
                                              end_value=floor)
  return optax.constant_schedule(peak)


def matrix_view(path_names, shape) -> tuple:
  """The shape Adafactor factors for a parameter (attention kernels as T5's matrices).

  [..., embed, heads, kv] query / key / value kernels -> [..., embed, heads * kv];
  [..., heads, kv, embed] output kernels -> [..., heads * kv, embed]; others unchanged.
  A leading scanned `layers` axis stays in front (optax factors the two largest dims).
  """
  shape = tuple(shape)
  if len(path_names) >= 2 and path_names[-1] == 'kernel' and len(shape) >= 3:
    if path_names[-2] in ('query', 'key', 'value'):
      return shape[:-2] + (shape[-2] * shape[-1],)
    if path_names[-2] == 'out':
      return shape[:-3] + (shape[-3] * shape[-2], shape[-1])
  return shape


def _as_matrices(tree):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (x.reshape(matrix_view(tree_paths.path_names(p), x.shape))
                    if hasattr(x, 'shape') else x),
      tree)


def view_as_matrices(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Run `tx` on `matrix_view`-reshaped params / gradients; updates come back in shape."""
  def init(params):
    return tx.init(_as_matrices(params))

  def update(updates, state, params=None):
    new, state = tx.update(_as_matrices(updates), state,
                           None if params is None else _as_matrices(params))
    return jax.tree.map(lambda u, g: u.reshape(g.shape), new, updates), state

  return optax.GradientTransformation(init, update)


def create(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """The configured optimizer, with optional global-norm clipping in front."""
  lr = schedule(opt_cfg, total_steps)
  if opt_cfg.name == 'adafactor':
    tx = view_as_matrices(adafactor(lr, opt_cfg.weight_decay or None))
  else:
    # optax.adamw's chain, with the decay restricted to `decays`.
    tx = optax.chain(optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=1e-8),
                     add_decayed_weights(opt_cfg.weight_decay),
                     optax.scale_by_learning_rate(lr))
  if opt_cfg.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.clip_grad_norm), tx)
  return tx


def state_layout_changes(saved_opt: dict, opt_cfg) -> list:
  """The settings of `opt_cfg` that give `create`'s optimizer state another pytree than a
  checkpoint saved under `saved_opt` (its config's "optimizer"), as 'field old -> new (why)':
  such a state cannot be restored, while other changes go on from it."""
  old = lambda k, default: saved_opt.get(k, default)  # noqa: E731
  changes = []
  if old('name', opt_cfg.name) != opt_cfg.name:
    changes.append(f'name {old("name", None)!r} -> {opt_cfg.name!r}')
  elif opt_cfg.name == 'adafactor' and bool(old('weight_decay', 0.0)) != bool(
      opt_cfg.weight_decay):  # (AdamW's chain always holds its decay)
    changes.append(f'weight_decay {old("weight_decay", 0.0)!r} -> {opt_cfg.weight_decay!r} '
                   '(Adafactor holds a decay transformation only when it is nonzero)')
  if bool(old('clip_grad_norm', 0.0)) != bool(opt_cfg.clip_grad_norm):
    changes.append(f'clip_grad_norm {old("clip_grad_norm", 0.0)!r} -> '
                   f'{opt_cfg.clip_grad_norm!r} (clipping on or off)')
  return changes


def adafactor(learning_rate, weight_decay_rate=None) -> optax.GradientTransformation:
  """`optax.adafactor` with the T5 defaults, built from the same optax transformations in
  the same order (so its state, and checkpoints of it, are the same pytree), except the
  parameter scale and weight decay on `decays` parameters only (optax's
  `weight_decay_mask=decay_mask` gives the same updates, in a MaskedState).

  optax's `scale_by_param_block_rms` computes each parameter's RMS twice (its
  `safe_root_mean_squares` is written to be differentiable: a second pass over a selected
  copy), about 0.66 GB of the update's 3.08 GB at T5 v1.1 small 4+4; `scale_by_param_rms`
  below takes the same max(RMS, 1e-3) in one pass: 277 -> 225 ms per update, bit-identical.
  tests/test_training.py compares the whole chain with optax.adafactor over several steps.

  Scanned stacks (a leading `layers` axis, `layer_rms`) clip and scale each layer by its
  own RMS, as T5X's Adafactor does with its 'layers': FactorDim.BATCH rule, so a scanned
  model takes the unscanned model's steps (optax's transforms would take one RMS over the
  whole stack; tests/test_numerics_sweep.py).
  """
  tx = [optax.scale_by_factored_rms(factored=True, decay_rate=0.8, step_offset=0,
                                    min_dim_size_to_factor=128, epsilon=1e-30),
        clip_by_block_rms(1.0),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_param_rms(1e-3)]
  if weight_decay_rate is not None:
    tx.append(add_decayed_weights(weight_decay_rate))
  tx.append(optax.scale(-1))
  return optax.chain(*tx)


def decays(path_names, shape) -> bool:
  """Whether weight decay applies to a parameter (module docstring): rank >= 2 without a
  scanned `layers` axis, and not a bias."""
  if tuple(path_names[-1:]) == ('bias',):  # attention biases are [heads, d_kv]: one vector in torch
    return False
  return len(shape) - ('layers' in path_names) >= 2


def decay_mask(params):
  """`decays` of each parameter, as a pytree of bools like `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: decays(tree_paths.path_names(p), x.shape), params)


def add_decayed_weights(rate: float) -> optax.GradientTransformation:
  """`optax.add_decayed_weights(rate, mask=decay_mask)` with the unmasked one's state
  (EmptyState): optax's mask wraps the state in a MaskedState, another opt_state pytree than
  the one existing checkpoints hold."""
  def update(updates, state, params=None):
    if params is None:
      raise ValueError('add_decayed_weights needs the params.')
    if not rate:
      return updates, state
    return jax.tree.map(lambda u, p, d: u + rate * p if d else u, updates, params,
                        decay_mask(params)), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def layer_rms(path, x):
  """RMS of a parameter-shaped array: of the whole array, or per layer (shape [layers, 1, ...])
  for a scanned stack's leading `layers` axis (T5X's Adafactor: 'layers' is a batch axis)."""
  if 'layers' in tree_paths.path_names(path) and x.ndim >= 1:
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def clip_by_block_rms(threshold: float) -> optax.GradientTransformation:
  """`optax.clip_by_block_rms` (same EmptyState), per layer on scanned stacks (`layer_rms`)."""
  def update(updates, state, params=None):
    del params
    clip = lambda p, u: u / jnp.maximum(1.0, layer_rms(p, u) / threshold).astype(u.dtype)
    return jax.tree_util.tree_map_with_path(clip, updates), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def scale_by_param_rms(min_scale: float = 1e-3) -> optax.GradientTransformation:
  """updates * max(RMS(param), min_scale) per parameter (per layer on scanned stacks,
  `layer_rms`): `optax.scale_by_param_block_rms`'s value, computed in one pass (an optimizer
  step is not differentiated)."""
  def update(updates, state, params=None):
    if params is None:
      raise ValueError('scale_by_param_rms needs the params.')
    scale = lambda path, u, p: u * jnp.maximum(layer_rms(path, p), min_scale).astype(u.dtype)
    return jax.tree_util.tree_map_with_path(scale, updates, params), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def schedule_count(opt_state) -> jax.Array:
  """The step count the optimizer's learning-rate schedule reads (its ScaleByScheduleState).

  It is the train step's unless a non-finite step was skipped: a skipped step keeps the whole
  optimizer state, this count included, so the learning rate the next update applies is
  schedule(schedule_count), not schedule(step)."""
  found = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
      if isinstance(s, optax.ScaleByScheduleState)]
  if len(found) != 1:
    raise ValueError(f'expected one learning-rate schedule state, found {len(found)}.')
  return found[0]


class _View:
  """A parameter's shape and mesh spec as the optimizer sees it (a pytree leaf)."""

  def __init__(self, shape, spec):
    self.shape, self.spec = tuple(shape), tuple(spec)


def _merged_spec(spec, shape, view_shape):
  """Spec of `view_shape` when two dims of `shape` were merged (major dim keeps its axes)."""
  spec = tuple(spec) + (None,) * (len(shape) - len(spec))
  if view_shape == shape:
    return spec
  for i in range(len(shape) - 1):
    if shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2:] == view_shape:
      merged = spec[i] if spec[i + 1] is None else None  # minor dim sharded: replicate
      return spec[:i] + (merged,) + spec[i + 2:]
  return (None,) * len(view_shape)


def state_shardings(tx, abstract_params, param_shardings, mesh, matrix_views: bool = False):
  """Optimizer state sharded like its parameters.

  Leaves shaped like their parameter (or its `matrix_view` when `matrix_views`) take its
  sharding; Adafactor's factored moments (that shape with one dimension removed) take the
  spec with that dimension dropped; everything else (counts, placeholders) is replicated.
  """
  replicated = NamedSharding(mesh, P())
  abstract_state = jax.eval_shape(tx.init, abstract_params)

  def view(path, param, sharding):
    shape = tuple(param.shape)
    view_shape = matrix_view(tree_paths.path_names(path), shape) if matrix_views else shape
    return _View(view_shape, _merged_spec(sharding.spec, shape, view_shape))
  views = jax.tree_util.tree_map_with_path(view, abstract_params, param_shardings)

  def pick(leaf, v):
    if not hasattr(leaf, 'shape'):
      return replicated
    if tuple(leaf.shape) == v.shape:
      return NamedSharding(mesh, P(*v.spec))
    if len(leaf.shape) == len(v.shape) - 1:
      for drop in reversed(range(len(v.shape))):
        if v.shape[:drop] + v.shape[drop + 1:] == tuple(leaf.shape):
          return NamedSharding(mesh, P(*(v.spec[:drop] + v.spec[drop + 1:])))
    return replicated

  return optax.tree_map_params(tx, pick, abstract_state, views,
                               transform_non_params=lambda _: replicated)


# ------------------------------------------------ start-up warnings (train prints them)
def say_if_the_schedule_idles(config) -> None:
  """A cosine schedule rises over its warmup, then decays to min_learning_rate at decay_steps
  (0 = train.steps): a warmup as long as that only ever warms up, and steps past decay_steps
  train at the floor (at rate 0 without one)."""
  o = config.optimizer
  if o.schedule != 'cosine':  # a value its schedule never reads would change nothing, unsaid
    unused = [k for k in ('decay_steps',) + (('warmup_steps', 'min_learning_rate')
                                             if o.schedule == 'constant' else ()) if o[k]]
    if unused:
      print(f'[t5x_lite] note: {", ".join(f"optimizer.{k}={o[k]}" for k in unused)} unused '
            f'under optimizer.schedule={o.schedule!r} (cosine reads them all).', flush=True)
    return
  horizon = int(o.decay_steps or config.train.steps)
  if o.warmup_steps >= horizon:
    what = (f'optimizer.decay_steps={o.decay_steps}' if o.decay_steps else
            f'train.steps={config.train.steps} (optimizer.decay_steps=0)')
    print(f'[t5x_lite] warning: the cosine schedule\'s warmup (optimizer.warmup_steps='
          f'{o.warmup_steps}) is not shorter than {what}: the learning rate only rises and '
          'never decays in this run.', file=sys.stderr, flush=True)
  elif horizon < config.train.steps and not o.min_learning_rate:
    print(f'[t5x_lite] warning: the cosine schedule reaches learning rate 0 at optimizer.'
          f'decay_steps={horizon}, before train.steps={config.train.steps}: the steps after '
          f'{horizon} leave the params unchanged (decay_steps=0 decays over train.steps).',
          file=sys.stderr, flush=True)


def say_if_adafactor_decay_erases(config) -> None:
  """Adafactor's weight decay (t5x's weight_decay_rate) multiplies the weight matrices by
  1 - weight_decay every step, whatever the learning rate: an AdamW-sized value erases them."""
  o, steps = config.optimizer, int(config.train.steps)
  if o.name != 'adafactor' or not o.weight_decay:
    return
  left = (1 - o.weight_decay) ** steps
  if left < 0.5:
    print(f'[t5x_lite] warning: optimizer.weight_decay={o.weight_decay} with adafactor '
          f'multiplies every weight matrix by {1 - o.weight_decay:g} each step (t5x\'s '
          f'weight_decay_rate: not scaled by the learning rate, unlike adamw\'s), by {left:.2g} '
          f'over train.steps={steps} from the decay alone.', file=sys.stderr, flush=True)


def say_if_adamw_moments_unused(config) -> None:
  """optimizer.b1 / b2 are AdamW's moment decays: Adafactor keeps T5's (no momentum, decay
  1 - step^-0.8), so values other than the defaults would change nothing, silently."""
  o = config.optimizer
  changed = [f'optimizer.{k}={o[k]}' for k, default in (('b1', ADAMW_B1), ('b2', ADAMW_B2))
             if o.name == 'adafactor' and o[k] != default]
  if changed:
    print(f'[t5x_lite] warning: {" and ".join(changed)} unused under adafactor: b1 / b2 are '
          'adamw\'s moment decays; adafactor keeps T5\'s (no momentum, second-moment decay '
          '1 - step^-0.8).', file=sys.stderr, flush=True)
