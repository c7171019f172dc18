"""Session-wide test setup.

Eight fake CPU devices for the sharding tests (tests/test_sharding.py). The setting must be
made before JAX creates its backends, so it lives here, for the whole pytest session.
Single-device tests are unaffected: without a mesh, jit places everything on device 0.
"""
import jax

jax.config.update('jax_num_cpu_devices', 8)
