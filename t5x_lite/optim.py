"""Optimizers (optax) and learning-rate schedules, and shardings for optimizer state.

Adafactor with the T5 defaults (reference page, section 6): decay_rate 0.8, no momentum,
factored second moments for rank>=2 params whose two largest dims are >= 128,
multiply_by_parameter_scale, update clipping 1.0, eps1 1e-30, eps2 (parameter-scale floor)
1e-3, no weight decay. AdamW for BERT / GPT recipes.

Schedules (`config.optimizer.schedule`):
    rsqrt:    lr = peak * sqrt(warmup / max(step, warmup))   (T5: peak 0.01, warmup 10k
              gives 1/sqrt(max(step, 10000)): constant 0.01, then inverse square root)
    cosine:   linear warmup 0 -> peak over `warmup_steps`, cosine to 0 at `decay_steps`
    constant: lr = peak (fine-tuning: 1e-3)
"""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

SCHEDULES = ('rsqrt', 'cosine', 'constant')
OPTIMIZERS = ('adafactor', 'adamw')


def validate(opt_cfg) -> None:
  if opt_cfg.name not in OPTIMIZERS:
    raise ValueError(f'config.optimizer.name={opt_cfg.name!r} must be one of '
                     f'{", ".join(OPTIMIZERS)}.')
  if opt_cfg.schedule not in SCHEDULES:
    raise ValueError(f'config.optimizer.schedule={opt_cfg.schedule!r} must be one of '
                     f'{", ".join(SCHEDULES)}.')
  if not opt_cfg.learning_rate > 0:
    raise ValueError(f'config.optimizer.learning_rate={opt_cfg.learning_rate} must be > 0.')
  if opt_cfg.warmup_steps < 0:
    raise ValueError(f'config.optimizer.warmup_steps={opt_cfg.warmup_steps} must be >= 0.')


def schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  validate(opt_cfg)
  peak, warmup = float(opt_cfg.learning_rate), int(opt_cfg.warmup_steps)
  if opt_cfg.schedule == 'rsqrt':
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      return peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
    return rsqrt
  if opt_cfg.schedule == 'cosine':
    decay_steps = int(opt_cfg.decay_steps or total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(decay_steps, warmup + 1))
  return optax.constant_schedule(peak)


def create(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """The configured optimizer, with optional global-norm clipping in front."""
  lr = schedule(opt_cfg, total_steps)
  if opt_cfg.name == 'adafactor':
    tx = optax.adafactor(
        learning_rate=lr, min_dim_size_to_factor=128, decay_rate=0.8, decay_offset=0,
        multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None,
        eps=1e-30, factored=True,
        weight_decay_rate=opt_cfg.weight_decay or None)
  else:
    tx = optax.adamw(lr, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=1e-8,
                     weight_decay=opt_cfg.weight_decay)
  if opt_cfg.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.clip_grad_norm), tx)
  return tx


def state_shardings(tx, abstract_params, param_shardings, mesh):
  """Optimizer state sharded like its parameters.

  Leaves shaped like their parameter take its sharding; Adafactor's factored moments
  (the parameter's shape with one dimension removed) take the parameter's spec with that
  dimension dropped; everything else (counts, placeholders) is replicated.
  """
  replicated = NamedSharding(mesh, P())
  abstract_state = jax.eval_shape(tx.init, abstract_params)

  def pick(leaf, param, sharding):
    if not hasattr(leaf, 'shape'):
      return replicated
    spec = tuple(sharding.spec) + (None,) * (len(param.shape) - len(sharding.spec))
    if leaf.shape == param.shape:
      return sharding
    if len(leaf.shape) == len(param.shape) - 1:
      for drop in reversed(range(len(param.shape))):
        if param.shape[:drop] + param.shape[drop + 1:] == leaf.shape:
          return NamedSharding(mesh, P(*(spec[:drop] + spec[drop + 1:])))
    return replicated

  return optax.tree_map_params(tx, pick, abstract_state, abstract_params, param_shardings,
                               transform_non_params=lambda _: replicated)
