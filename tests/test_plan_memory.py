"""`plan`'s bytes per device agree with XLA's own memory analysis of the compiled train step.

T5 v1.1 small (8 + 8 layers, vocab 32128, batch 8, inputs 512 / targets 114, float32,
Adafactor, data parallel over the test session's 8 CPU devices, so one example per device):
the step is lowered and compiled (not run); its live bytes are the
arguments (state + batch) plus outputs not aliased to donated arguments plus XLA's temporary
buffers (gradients, saved activations, workspaces). The plan must land within 15%.
"""
import jax

from configs import t5_v1_1
from t5x_lite import accounting, families, partitioning, trainer as trainer_lib


def compiled_step_bytes(config):
  mesh = partitioning.create_mesh(config.partitioning)
  trainer = trainer_lib.Trainer(config, mesh)
  batch = families.synthetic_batch(config, config.train.batch_size)
  with partitioning.activate(mesh, trainer.rules):
    compiled = trainer._jit_train.lower(trainer.abstract_state, batch,
                                        jax.random.PRNGKey(0)).compile()
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
          m.temp_size_in_bytes)


def test_plan_bytes_within_15_percent_of_compiled_t5_small_step():
  config = t5_v1_1.get_config('small')
  config.partitioning.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  memory = accounting.memory_per_device(config, jax.device_count())
  planned = memory['total_bytes']
  compiled = compiled_step_bytes(config)
  # Not vacuous: activations are a large part of the figure, not just params and grads.
  assert compiled > 1.5 * (memory['params_bytes'] + memory['grads_bytes'])
  assert abs(planned / compiled - 1) <= 0.15, (planned / 1e6, compiled / 1e6)
