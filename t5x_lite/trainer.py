"""Train state and the jitted train / eval steps.

Owns: `TrainState` (step, params, opt_state), its creation inside `jax.jit` with output
shardings (so every leaf is a global array from the start, which Orbax multi-host saves
need), the train step (z-loss, label smoothing, loss normalisation, gradient accumulation
over microbatches, a dropout RNG per step, a guard that skips non-finite updates) and the
teacher-forced eval step.

Gradient accumulation: the global batch is split into `grad_accum_steps` microbatches of
rows i, i+k, i+2k, ... (each device keeps its own rows); every microbatch loss is divided by
the token count of the whole batch, so k x (batch/k) gives the gradient of 1 x batch.
"""
from typing import Any, Dict

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from t5x_lite import families, layers, losses, models, optim, partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any

  def as_dict(self) -> Dict[str, Any]:
    return {'step': self.step, 'params': self.params, 'opt_state': self.opt_state}


class Trainer:
  """Builds the model, optimizer and shardings for one config and mesh; owns the steps."""

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    self.rules = partitioning.axis_rules(config.partitioning)
    self.model_cfg = models.ModelConfig.from_config(config.model)
    self.model = models.build(self.model_cfg)
    self.schedule = optim.schedule(config.optimizer, config.train.steps)
    self.tx = optim.create(config.optimizer, config.train.steps)
    family = families.get(self.model_cfg.family)
    self.targets_key, self.weights_key = family.targets, family.weights

    boxed = models.abstract_params(self.model_cfg)
    partitioning.validate_divisibility(boxed, mesh, self.rules)
    param_shardings = partitioning.shardings(boxed, mesh, self.rules)
    abstract_params = nn.unbox(boxed)
    self.state_shardings = TrainState(
        step=NamedSharding(mesh, P()), params=param_shardings,
        opt_state=optim.state_shardings(
            self.tx, abstract_params, param_shardings, mesh,
            matrix_views=config.optimizer.name == 'adafactor'))
    # = jax.eval_shape(self._init_state, rng), without tracing the model's init once more
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=jax.eval_shape(self.tx.init, abstract_params))
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    self.batch_sharding = partitioning.batch_sharding(mesh)
    self.replicated = NamedSharding(mesh, P())

    with partitioning.activate(mesh, self.rules):
      self._jit_init = jax.jit(self._init_state, out_shardings=self.state_shardings)
      self._jit_train = jax.jit(
          self._train_step, donate_argnums=(0,),
          in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
          out_shardings=(self.state_shardings, self.replicated))
      self._jit_eval = jax.jit(self._eval_step,
                               in_shardings=(self.state_shardings.params, self.batch_sharding),
                               out_shardings=self.replicated)

  # ---------------------------------------------------------------------- creation
  def _init_state(self, rng):
    batch = families.dummy_batch(self.model_cfg.family)
    params = nn.unbox(self.model.init(rng, batch))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params))

  def init_state(self, seed: int) -> TrainState:
    with partitioning.activate(self.mesh, self.rules):
      return self._jit_init(jax.random.PRNGKey(seed))

  def state_from_params(self, params) -> TrainState:
    """A fresh state (step 0, new optimizer state) around given params (fine-tuning)."""
    params = jax.device_put(params, self.state_shardings.params)
    init_opt = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), self.replicated),
                      params=params, opt_state=init_opt(params))

  # ------------------------------------------------------------------------- steps
  def _loss(self, params, batch, rng, num_real_tokens):
    tc = self.config.train
    deterministic = self.model_cfg.dropout_rate == 0.0
    logits = self.model.apply({'params': params}, batch, deterministic=deterministic,
                              rngs={'dropout': rng})
    return losses.weighted_loss(
        logits, batch[self.targets_key], batch[self.weights_key],
        z_loss=self.config.optimizer.z_loss, label_smoothing=tc.label_smoothing,
        normalization=tc.loss_normalization,
        normalization_constant=tc.loss_normalization_constant,
        num_real_tokens=num_real_tokens)

  def _train_step(self, state: TrainState, batch, base_rng):
    accum = self.config.train.grad_accum_steps
    rng = jax.random.fold_in(base_rng, state.step)
    num_real = jnp.sum(batch[self.weights_key].astype(jnp.float32))
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)

    if accum == 1:
      (loss, stats), grads = grad_fn(state.params, batch, rng, num_real)
    else:
      def split(x):  # [B, ...] -> [accum, B/accum, ...], microbatch i = rows i::accum
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
      micro = jax.tree.map(split, batch)

      def body(carry, inputs):
        i, mb = inputs
        mb = jax.tree.map(_rows_over_batch_axes, mb)
        (l, s), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), num_real)
        acc_l, acc_s, acc_g = carry
        return (acc_l + l, jax.tree.map(jnp.add, acc_s, s), jax.tree.map(jnp.add, acc_g, g)), None

      zeros_g = jax.tree.map(jnp.zeros_like, state.params)
      zeros_s = {k: jnp.zeros((), jnp.float32) for k in
                 ('loss_sum', 'z_loss_sum', 'correct_sum', 'weight_sum')}
      (loss, stats, grads), _ = jax.lax.scan(
          body, (jnp.zeros((), jnp.float32), zeros_s, zeros_g), (jnp.arange(accum), micro))

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = self.tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # A non-finite step leaves the state untouched: no NaN can reach a checkpoint.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                           opt_state=keep(new_opt_state, state.opt_state))
    weight = jnp.maximum(stats['weight_sum'], 1.0)
    metrics = {
        'loss': loss,
        'loss_per_token': stats['loss_sum'] / weight,
        'accuracy': stats['correct_sum'] / weight,
        'z_loss': stats['z_loss_sum'] / weight,
        'grad_norm': grad_norm,
        # the rate this update applied: the schedule reads the optimizer's own count, which
        # a skipped (non-finite) step leaves behind state.step
        'learning_rate': self.schedule(optim.schedule_count(state.opt_state)),
        'target_tokens': stats['weight_sum'],
        'finite': finite,
    }
    return new_state, metrics

  def _eval_step(self, params, batch):
    logits = self.model.apply({'params': params}, batch, deterministic=True)
    _, stats = losses.weighted_loss(logits, batch[self.targets_key], batch[self.weights_key],
                                    z_loss=self.config.optimizer.z_loss, normalization='sum')
    return stats

  # --------------------------------------------------------------------- host API
  def shard_batch(self, host_batch: Dict[str, np.ndarray]):
    return partitioning.global_batch(host_batch, self.mesh)

  def train_step(self, state: TrainState, batch, rng):
    with partitioning.activate(self.mesh, self.rules):
      return self._jit_train(state, batch, rng)

  def eval_step(self, params, batch):
    with partitioning.activate(self.mesh, self.rules):
      return self._jit_eval(params, batch)


def _rows_over_batch_axes(x):
  """Keep microbatch rows split over the batch mesh axes (a no-op outside a mesh)."""
  return layers.constrain(x, ('batch',) + (None,) * (x.ndim - 1))
