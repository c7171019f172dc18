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
import functools
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
# Every logical axis name a parameter or an activation constraint carries (layers.py,
# models.py; tests/test_sharding.py checks the models use no other): a rule naming another
# is a typo that would leave the axis it meant unsharded.
LOGICAL_AXES = ('batch', 'length', 'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers',
                'relpos_buckets')


def _axis_sizes(section, name: str) -> Dict[str, int]:
  """{axis: size} of `config.partitioning.<name>`; ValueError naming the field when a size is
  not an integer (a bool or a float is not taken as one) or an axis is unknown."""
  unknown = set(section.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.partitioning.{name} has unknown axis {sorted(unknown)[0]!r}; '
                     f'mesh axes are {", ".join(MESH_AXES)}.')
  sizes = {}
  for axis in MESH_AXES:
    value = section.get(axis, 1)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      allowed = 'a positive integer or -1' if name == 'mesh' else 'a positive integer'
      raise ValueError(f'config.partitioning.{name}.{axis}={value!r} must be {allowed}.')
    sizes[axis] = int(value)
  return sizes


def mesh_shape(partitioning_cfg, num_devices: int) -> Dict[str, int]:
  """Resolve -1 in `partitioning.mesh` and check the product equals `num_devices`.

  Sizes in `mesh` are per slice (ici); `dcn_mesh` multiplies them across slices, so the
  axis filled by -1 must come out a multiple of its dcn size.
  """
  if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)) or \
      num_devices < 1:
    raise ValueError(f'the device count must be a positive integer, got {num_devices!r}.')
  sizes = _axis_sizes(partitioning_cfg.mesh, 'mesh')
  dcn = _axis_sizes(partitioning_cfg.get('dcn_mesh', {}), 'dcn_mesh')
  for a in MESH_AXES:
    if sizes[a] == 0 or sizes[a] < -1:
      raise ValueError(f'config.partitioning.mesh.{a}={sizes[a]} must be a positive size or -1.')
    if dcn[a] < 1:
      raise ValueError(f'config.partitioning.dcn_mesh.{a}={dcn[a]} must be a positive size.')
  total = {a: sizes[a] * dcn[a] if sizes[a] != -1 else -1 for a in MESH_AXES}
  fill = [a for a in MESH_AXES if sizes[a] == -1]
  if len(fill) > 1:
    raise ValueError(f'config.partitioning.mesh may use -1 for one axis only, got {fill}.')
  known = math.prod(v for v in total.values() if v != -1)
  if fill:
    a = fill[0]
    if num_devices % (known * dcn[a]):
      across = f' x dcn_mesh.{a}={dcn[a]}' if dcn[a] > 1 else ''
      raise ValueError(
          f'config.partitioning.mesh {dict(sizes)} cannot fill {num_devices} devices: the '
          f'fixed axes multiply to {known}{across}, which does not divide {num_devices}.')
    total[a] = num_devices // known
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
  """The ordered rules table as a tuple of (logical, mesh axis or tuple or None).

  ValueError naming `config.partitioning.logical_axis_rules[i]` when an entry is not a pair
  (logical name, mesh axis | tuple of mesh axes | None), names an unknown mesh axis or
  repeats one (e.g. a command-line override `--config.partitioning.logical_axis_rules=...`
  with a typo), or when `batch` is not mapped to BATCH_AXES, the axes input batches are
  split over.
  """
  table = partitioning_cfg.logical_axis_rules
  field = 'config.partitioning.logical_axis_rules'
  shape = ('a pair (logical axis name, mesh axis | tuple of mesh axes | None), e.g. '
           "('embed', 'fsdp')")
  if isinstance(table, (str, bytes)) or not isinstance(table, (tuple, list)):
    raise ValueError(f'{field}={table!r} must be a tuple of rules, each {shape}.')
  rules = []
  for i, rule in enumerate(table):
    where = f'{field}[{i}]={rule!r}'
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ValueError(f'{where} must be {shape}.')
    logical, mesh_axes = rule
    if not isinstance(logical, str):
      raise ValueError(f'{where}: the logical axis name must be a string.')
    if logical not in LOGICAL_AXES:
      raise ValueError(f'{where}: no parameter or activation has the logical axis '
                       f'{logical!r}; logical axes are {", ".join(LOGICAL_AXES)}.')
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    names = () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
    if not isinstance(names, tuple) or not all(isinstance(a, str) for a in names):
      raise ValueError(f'{where} must be {shape}.')
    unknown = [a for a in names if a not in MESH_AXES]
    if unknown:
      raise ValueError(f'{field} maps {logical!r} to unknown mesh axis {unknown[0]!r}; mesh '
                       f'axes are {", ".join(MESH_AXES)}.')
    if len(set(names)) != len(names):
      raise ValueError(f'{where} names a mesh axis twice.')
    rules.append((logical, mesh_axes))
  batch = next((names for logical, names in rules if logical == 'batch'), None)
  if batch != BATCH_AXES:  # activations would be resharded against their inputs every step
    raise ValueError(f"{field} maps 'batch' to {batch!r}: input batches are split over "
                     f"{BATCH_AXES} (partitioning.batch_sharding), so the first 'batch' rule "
                     f"must be ('batch', {BATCH_AXES}).")
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


# The model field that sizes each logical axis (named in a divisibility error).
_SIZED_BY = {'vocab': 'vocab_size', 'embed': 'd_model', 'mlp': 'd_ff', 'heads': 'num_heads',
             'kv': 'd_kv', 'relpos_buckets': 'relative_attention_num_buckets'}


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
        field = _SIZED_BY.get(names[dim])
        field = f' = config.model.{field}' if field else ''
        raise ValueError(
            f'parameter {"/".join(path)} dimension {dim} ({names[dim]}, size {size}{field}) is '
            f'not divisible by mesh axes {axes} of size {parts}; change the size, config.'
            f'partitioning.mesh or the rule for {names[dim]!r} in config.partitioning.'
            'logical_axis_rules.')


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


def stream_rows_problem(global_batch: int, num_streams: int) -> str:
  """Why `global_batch` rows cannot be fed by `num_streams` input streams (data.
  num_virtual_shards), or ''. Every stream feeds the same number of rows: a stream with none
  would leave its part of the corpus unread, unequal blocks read some parts faster."""
  if global_batch < 1:
    return f'config.train.batch_size={global_batch} must be a positive integer.'
  if num_streams < 1:
    return f'data.num_virtual_shards={num_streams} must be at least 1.'
  if global_batch % num_streams:
    return (f'config.train.batch_size={global_batch} is not a multiple of '
            f'data.num_virtual_shards={num_streams}: each stream (a part of the corpus) '
            f'feeds an equal block of every batch; use a multiple of {num_streams} rows, '
            f'or a data.num_virtual_shards that divides {global_batch} (a fresh run\'s '
            'data order changes).')
  return ''


def microbatch_rows_per_device(config, axis_sizes: Dict[str, int]) -> int:
  """Rows each device (data x fsdp) gets of one gradient-accumulation microbatch."""
  data, fsdp = axis_sizes['data'], axis_sizes['fsdp']
  return split_batch(config.train, data * fsdp, f'the data x fsdp mesh axes ({data} x {fsdp})',
                     int(config.train.get('grad_accum_steps', 1)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split their leading dimension over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_slices_by_process(mesh: Mesh) -> Dict[int, frozenset]:
  """{process index: the slices of the batch its devices hold}: `batch_sharding` splits rows
  into data x fsdp slices (data-major); the tensor axis replicates them."""
  names = list(mesh.axis_names)
  fsdp = mesh.shape['fsdp']
  held: Dict[int, set] = {}
  for coords, device in np.ndenumerate(mesh.devices):
    at = dict(zip(names, coords))
    held.setdefault(device.process_index, set()).add(at['data'] * fsdp + at['fsdp'])
  return {p: frozenset(s) for p, s in held.items()}


@functools.lru_cache(maxsize=16)
def processes_share_batch_rows(mesh: Mesh) -> bool:
  """Whether some slice of the batch lives on devices of more than one process, e.g. a
  mesh whose data x fsdp axes are smaller than the process count (tensor parallelism across
  hosts): those processes must then feed the same rows."""
  held = batch_slices_by_process(mesh)
  return sum(len(s) for s in held.values()) > len(frozenset().union(*held.values()))


def global_batch(host_batch: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Host-local numpy batch (this host's rows) -> global jax arrays sharded over the batch.

  Every process feeds its own block of rows (process p: rows [p B / P, (p + 1) B / P) of the
  global batch B, the data pipeline's virtual shards). Where each slice of the batch lives on
  one process's devices, those rows are its slices. Where processes share slices
  (`processes_share_batch_rows`), the hosts first exchange their rows, so every device holds
  the rows of the same global batch that one process would have fed.
  """
  sharding = batch_sharding(mesh)
  nproc = jax.process_count()
  if nproc > 1 and processes_share_batch_rows(mesh):
    from jax.experimental import multihost_utils
    rows = multihost_utils.process_allgather(host_batch, tiled=True)  # in process order
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]),
        jax.tree.map(np.asarray, rows))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, x, (x.shape[0] * nproc,) + tuple(x.shape[1:])), host_batch)
