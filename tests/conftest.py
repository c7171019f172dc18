"""Session-wide test setup.

Eight fake CPU devices for the sharding tests (tests/test_sharding.py). The setting must be
made before JAX creates its backends, so it lives here, for the whole pytest session.
Single-device tests are unaffected: without a mesh, jit places everything on device 0.

A persistent compilation cache, fresh for each session, shared with the subprocesses the CLI
tests start (they inherit the environment): the same tiny programs compile once.
"""
import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='t5x_lite_jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The suite compiles hundreds of tiny programs and runs each a few times: XLA's lowest
# backend optimisation level (mainly LLVM's codegen) compiles them faster than it costs in
# running them (tests/test_training.py alone: 117 s -> 82 s).
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')

import jax  # noqa: E402  (after the environment above)

jax.config.update('jax_num_cpu_devices', 8)
