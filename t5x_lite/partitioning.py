"""Device mesh, logical-axis rules and shardings.

Owns: the mesh built from `config.partitioning` (axes `data`, `fsdp`, `tensor`; -1 takes
the remaining devices; an optional multi-slice `dcn_mesh` split), the one ordered rules
table mapping logical axis names to mesh axes, shardings for parameters / train state /
batches, validation that every sharded dimension divides its mesh axes, and turning
host-local batches into global arrays.

Switching data parallel, FSDP (ZeRO-3) and tensor parallel is a config change only:
    data parallel:   mesh = {data: -1, fsdp: 1, tensor: 1}
    FSDP:            mesh = {data: 1, fsdp: -1, tensor: 1}   (params split on `embed`)
    tensor parallel: mesh = {data: -1, fsdp: 1, tensor: 2}   (heads / mlp / vocab split)
Rules are ordered: for each parameter dimension, the first rule for its logical name whose
mesh axis is not already used by another dimension of the same parameter wins.
"""
import contextlib
import math
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t5x_lite import tree_paths

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def _axis_sizes(section, name: str) -> Dict[str, int]:
  sizes = {axis: int(section.get(axis, 1)) for axis in MESH_AXES}
  unknown = set(section.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.partitioning.{name} has unknown axis {sorted(unknown)[0]!r}; '
                     f'mesh axes are {", ".join(MESH_AXES)}.')
  return sizes


def mesh_shape(partitioning_cfg, num_devices: int) -> Dict[str, int]:
  """Resolve -1 in `partitioning.mesh` and check the product equals `num_devices`."""
  sizes = _axis_sizes(partitioning_cfg.mesh, 'mesh')
  dcn = _axis_sizes(partitioning_cfg.get('dcn_mesh', {}), 'dcn_mesh')
  total = {a: sizes[a] * dcn[a] if sizes[a] != -1 else -1 for a in MESH_AXES}
  fill = [a for a in MESH_AXES if sizes[a] == -1]
  if len(fill) > 1:
    raise ValueError(f'config.partitioning.mesh may use -1 for one axis only, got {fill}.')
  for a in MESH_AXES:
    if sizes[a] == 0 or sizes[a] < -1 or dcn[a] < 1:
      raise ValueError(f'config.partitioning.mesh.{a}={sizes[a]} (dcn {dcn[a]}) must be a '
                       'positive size or -1.')
  known = math.prod(v for v in total.values() if v != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
          f'config.partitioning.mesh {dict(sizes)} cannot fill {num_devices} devices: the '
          f'fixed axes multiply to {known}, which does not divide {num_devices}.')
    total[fill[0]] = num_devices // known
  if math.prod(total.values()) != num_devices:
    raise ValueError(
        f'config.partitioning.mesh {dict(sizes)} x dcn {dict(dcn)} needs '
        f'{math.prod(total.values())} devices but {num_devices} are available; set one axis '
        'to -1 or change the sizes.')
  return total


def create_mesh(partitioning_cfg, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Mesh with axes (data, fsdp, tensor); multi-slice when `dcn_mesh` has a size > 1."""
  devices = list(devices if devices is not None else jax.devices())
  total = mesh_shape(partitioning_cfg, len(devices))
  dcn = _axis_sizes(partitioning_cfg.get('dcn_mesh', {}), 'dcn_mesh')
  shape = [total[a] for a in MESH_AXES]
  if math.prod(dcn.values()) > 1:
    ici = [total[a] // dcn[a] for a in MESH_AXES]
    # Slices (TPU multi-slice) or, where devices have no slice index (GPU / CPU clusters),
    # processes are the granules that the slow dcn network connects.
    by_process = getattr(devices[0], 'slice_index', None) is None
    granules = len({d.process_index if by_process else d.slice_index for d in devices})
    if granules != math.prod(dcn.values()):
      raise ValueError(
          f'config.partitioning.dcn_mesh {dict(dcn)} needs {math.prod(dcn.values())} '
          f'{"processes" if by_process else "slices"} but there are {granules}.')
    arr = mesh_utils.create_hybrid_device_mesh(ici, [dcn[a] for a in MESH_AXES], devices,
                                               process_is_granule=by_process)
  else:
    try:
      arr = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
      arr = np.array(devices).reshape(shape)  # CPU / unknown topologies: plain order
  return Mesh(arr, MESH_AXES)


def axis_rules(partitioning_cfg):
  """The ordered rules table as a tuple of (logical, mesh axis or tuple or None)."""
  rules = []
  for logical, mesh_axes in partitioning_cfg.logical_axis_rules:
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    rules.append((logical, mesh_axes))
  return tuple(rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
  """Make `mesh` and the logical rules current (enables activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_specs(boxed_tree):
  """Tree of logical PartitionSpecs from a tree holding `nn.Partitioned` boxes."""
  return nn.get_partition_spec(boxed_tree)


def mesh_specs(boxed_tree, rules):
  """Tree of mesh-axis PartitionSpecs (what a parameter is actually split over)."""
  return nn.logical_to_mesh(logical_specs(boxed_tree), rules)


def shardings(boxed_tree, mesh: Mesh, rules):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs(boxed_tree, rules),
                      is_leaf=lambda x: isinstance(x, P))


def validate_divisibility(abstract_boxed_tree, mesh, rules) -> None:
  """Every sharded dimension must divide the product of its mesh-axis sizes.

  `mesh` is a `Mesh` or a dict of axis sizes (e.g. `mesh_shape(...)`), so that a plan for
  a large mesh can be checked without creating its devices.
  """
  axis_sizes = dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)
  specs = mesh_specs(abstract_boxed_tree, rules)
  logical = logical_specs(abstract_boxed_tree)
  flat_values = tree_paths.named_leaves(nn.unbox(abstract_boxed_tree))
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  flat_logical = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
  for (path, value), spec, names in zip(flat_values, flat_specs, flat_logical):
    for dim, (size, axes) in enumerate(zip(value.shape, tuple(spec) + (None,) * 8)):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      parts = math.prod(axis_sizes[a] for a in axes)
      if size % parts:
        raise ValueError(
            f'parameter {"/".join(path)} dimension {dim} ({names[dim]}, size {size}) is not divisible by '
            f'mesh axes {axes} of size {parts}; change config.partitioning.mesh or the rule '
            f'for {names[dim]!r} in config.partitioning.logical_axis_rules.')


def split_batch(train_cfg, parts: int, over: str, microbatches: int = 1) -> int:
  """Rows per part of each of `microbatches` slices of config.train.batch_size.

  The one batch-divisibility check (config validation, plan, the data pipeline's per-host
  batch); `over` names the divisor, e.g. 'num_shards=2'. ValueError when it does not split.
  """
  rows = int(train_cfg.batch_size)
  if rows % microbatches:
    raise ValueError(f'config.train.batch_size={rows} is not divisible by '
                     f'config.train.grad_accum_steps={microbatches}.')
  per_micro = '' if microbatches == 1 else f' / grad_accum_steps={microbatches}'
  if (rows // microbatches) % parts:
    raise ValueError(f'config.train.batch_size={rows}{per_micro} is not divisible by {over}.')
  return rows // microbatches // parts


def microbatch_rows_per_device(config, axis_sizes: Dict[str, int]) -> int:
  """Rows each device (data x fsdp) gets of one gradient-accumulation microbatch."""
  data, fsdp = axis_sizes['data'], axis_sizes['fsdp']
  return split_batch(config.train, data * fsdp, f'the data x fsdp mesh axes ({data} x {fsdp})',
                     int(config.train.get('grad_accum_steps', 1)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split their leading dimension over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(host_batch: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Host-local numpy batch (this host's rows) -> global jax arrays sharded over the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      host_batch)
