"""Orbax checkpoints: train state + data-iterator state + config, and restore precedence.

Each step directory `WORKDIR/checkpoints/<step>/` holds three items written by one
`orbax.checkpoint.CheckpointManager` (atomic: a step directory only appears once complete):
    state/   the TrainState {step, params, opt_state} (global arrays, any mesh)
    data/    the data position of every virtual shard: data/stream-<v>-of-<V>.* (tf.data)
    config/  the full config as JSON
    progress/ host-side counters as JSON (tokens seen)

Restore precedence (`restore_or_init`), said in one log line:
    1. the latest checkpoint in the workdir (resume: state, optimizer and data position),
    2. else `config.init_from` (fine-tune: params only, fresh optimizer, fresh data),
    3. else a fresh start from `config.train.seed`.
"""
import dataclasses
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite.trainer import TrainState

log = logging.getLogger(__name__)


# ------------------------------------------------------------- data-iterator item
class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves any iterator with `save(dir)` / `restore(dir)` into the item directory: every
  process writes the streams it runs (one file set per virtual shard), so any process
  count can restore them; the iterator says clearly when it finds an older layout."""

  def save(self, directory: epath.Path, args: 'DataIteratorSave'):
    epath.Path(directory).mkdir(parents=True, exist_ok=True)
    args.iterator.save(os.fspath(directory))

  def restore(self, directory: epath.Path, args: 'DataIteratorRestore'):
    args.iterator.restore(os.fspath(directory))
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


def _path_name(path) -> str:
  """'opt_state/0/v/encoder/...' whether a level is a dict, a tuple or a named tuple."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in path)


def shape_mismatch(saved_tree, abstract_tree) -> str:
  """'' if the shapes agree, else the first differing leaves ('path: saved X vs config Y')."""
  saved = {_path_name(p): tuple(v.shape) for p, v in
           jax.tree_util.tree_flatten_with_path(saved_tree)[0] if hasattr(v, 'shape')}
  want = {_path_name(p): tuple(v.shape) for p, v in
          jax.tree_util.tree_flatten_with_path(abstract_tree)[0]}
  diffs = [f'{k}: saved {saved.get(k)} vs config {want.get(k)}'
           for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)]
  more = f' (and {len(diffs) - 3} more)' if len(diffs) > 3 else ''
  return '; '.join(diffs[:3]) + more


# ----------------------------------------------------------------------- manager
class Checkpoints:
  """Thin wrapper over `ocp.CheckpointManager` for the three items above."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(os.path.abspath(directory))  # Orbax needs absolute paths
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler(),
                       'progress': ocp.JsonCheckpointHandler(),
                       'data': DataIteratorHandler()})

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, data_iterator, config_dict: dict,
           progress: Optional[dict] = None) -> bool:
    args = {'state': ocp.args.StandardSave(state.as_dict()),
            'config': ocp.args.JsonSave(config_dict),
            'progress': ocp.args.JsonSave(progress or {})}
    if data_iterator is not None:
      args['data'] = DataIteratorSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def saved_config(self, step: int) -> dict:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return restored['config']

  def progress(self, step: int) -> dict:
    path = self.directory / str(step) / 'progress'
    if not path.exists():
      return {}
    return self.manager.restore(step, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))['progress']

  def check_compatible(self, step: int, abstract_state: TrainState) -> None:
    """Clear error if the saved state's shapes differ from the current config's."""
    meta = self.manager.item_metadata(step)['state']
    mismatch = shape_mismatch(getattr(meta, 'tree', meta), abstract_state.as_dict())
    if mismatch:
      raise ValueError(
          f'checkpoint {self.directory / str(step)} does not match this config: {mismatch}. '
          f'Use a new --workdir (or delete {self.directory}) to start fresh.')

  def restore(self, step: int, abstract_state: TrainState, data_iterator=None) -> TrainState:
    self.check_compatible(step, abstract_state)
    args = {'state': ocp.args.StandardRestore(abstract_state.as_dict())}
    if data_iterator is not None:
      args['data'] = DataIteratorRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return TrainState(**restored['state'])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def resolve_params_dir(directory: str) -> epath.Path:
  """A workdir, its checkpoints/, a step dir, or a plain pytree dir -> the pytree dir."""
  path = epath.Path(os.path.abspath(directory))
  if (path / 'checkpoints').exists():
    path = path / 'checkpoints'
  steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) \
      if path.is_dir() else []
  if steps:
    path = path / str(steps[-1])
  if (path / 'state').exists():
    path = path / 'state'
  if not (path / '_METADATA').exists() and not (path / '_CHECKPOINT_METADATA').exists():
    raise ValueError(f'{directory} holds no t5x_lite checkpoint (looked in {path}).')
  return path


def load_params(directory: str, abstract_params):
  """Only the params of a checkpoint (fine-tuning), sharded like `abstract_params`."""
  path = resolve_params_dir(directory)
  target = {'params': abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return restored['params'], path
