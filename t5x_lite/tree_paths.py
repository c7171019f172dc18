"""Names of pytree key paths: one spelling for error messages, per-parameter tables and
Adafactor's matrix view ('encoder/layers_0/mlp/wi_0/kernel', 'opt_state/0/v/...')."""
import jax


def path_names(path) -> tuple:
  """A key path as a tuple of str, whether each level is a dict, a sequence or a named tuple."""
  return tuple(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path)


def named_leaves(tree) -> list:
  """[(path_names, leaf)] of `tree`, in tree order."""
  return [(path_names(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
