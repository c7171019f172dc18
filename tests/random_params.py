"""Random float32 parameters for a model's param tree (shared by the model and sharding
tests): every norm scale, bias and position table non-trivial, so a wrong mapping shows."""
import jax
import numpy as np


def random_params(abstract_params, seed=0):
  """abstract_params: the unboxed `params` tree (shapes only; nothing is compiled)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name in ('embedding', 'rel_embedding'):
      x = rng.normal(0.0, 1.0, shape)
    elif name == 'kernel':
      x = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
    elif name == 'scale':
      x = 1.0 + 0.2 * rng.normal(size=shape)
    else:  # biases
      x = 0.2 * rng.normal(size=shape)
    return np.asarray(x, np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract_params)
