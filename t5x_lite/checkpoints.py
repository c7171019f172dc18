"""Orbax checkpoints: train state + data-iterator state + config, and restore precedence.

Each step directory `WORKDIR/checkpoints/<step>/` holds three items written by one
`orbax.checkpoint.CheckpointManager` (atomic: a step directory only appears once complete):
    state/   the TrainState {step, params, opt_state} (global arrays, any mesh)
    data/    the data position of every virtual shard: data/stream-<v>-of-<V>.* (tf.data),
             and files.json: the input files and sizes (a refused resume names the changed)
    config/  the full config as JSON
    progress/ host-side counters as JSON (tokens seen)

Integrity (`checkpoint_integrity`): a manifest of each step's files' sizes and CRC-32s is
written as Orbax finishes it (async saves: inside the atomic commit; sync saves: just after
the save returns); resume and eval verify before use, and a corrupt, truncated or partly
deleted newest checkpoint is reported in one warning and skipped (moved aside by a resuming
run, never deleted) in favour of the newest intact one. A save that
fails in the background surfaces as `CheckpointError` at the next `check_for_errors`.

Also owns finding the latest complete checkpoint (`complete_steps`, `latest_checkpoint`,
`resolve_params_dir`), the one shape check against a config (`check_shapes`), params-only
loading for fine-tuning and evaluation, and the restore precedence.

Restore precedence (`restore_or_init`), said in one log line:
    1. the latest checkpoint in the workdir (resume: state, optimizer and data position),
    2. else `config.init_from` (fine-tune: params only, fresh optimizer, fresh data),
    3. else a fresh start from `config.train.seed`.
"""
import dataclasses
import os
import sys
import tempfile
from typing import Any, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import checkpoint_integrity as integrity
from t5x_lite import run_config
from t5x_lite import tree_paths
from t5x_lite.trainer import TrainState


class CheckpointError(OSError):
  """A checkpoint save failed (often in the background); earlier checkpoints are intact."""


def warn(line: str) -> None:
  print(f'[t5x_lite] warning: {line}', file=sys.stderr, flush=True)


def check_workdir(workdir: str, writes: str, subdirs=(), files=()) -> None:
  """Fails in one line, before any work, on a workdir the command cannot write into (nor
  into its `subdirs`, or with a directory where it writes one of its `files`); `writes` says
  what the command would have written there."""
  if '://' in workdir:  # os.makedirs would make a local './gs:/bucket/...' on every host
    raise ValueError(f'--workdir={workdir}: URL workdirs are not supported (checkpoints, '
                     f'metrics and manifests are written with local file APIs); give a path '
                     f'every host sees: NFS / Filestore, or the bucket mounted with gcsfuse.')
  # Subdirectories are probed only where they exist (a refused run leaves none behind).
  for where in [workdir] + [p for d in subdirs for p in [os.path.join(workdir, d)]
                            if os.path.lexists(p)]:
    try:
      os.makedirs(where, exist_ok=True)
      # A unique name: every host of a multi-host run probes the same (shared) workdir.
      with tempfile.NamedTemporaryFile(dir=where, prefix='.write_test_'):
        pass
    except OSError as e:
      why = 'a file' if os.path.isfile(where) else e.strerror
      raise ValueError(f'--workdir={workdir}{"" if where == workdir else ": " + where} is not '
                       f'writable ({why}): it holds {writes}.') from None
  for name in files:
    if os.path.isdir(os.path.join(workdir, name)):
      raise ValueError(f'--workdir={workdir}: {os.path.join(workdir, name)} is a directory, '
                       f'where the command writes its {name} file: move it away.')


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


def shape_mismatch(saved_tree, abstract_tree) -> str:
  """'' if the shapes agree, else the first differing leaves ('path: saved X vs config Y')."""
  saved = {'/'.join(p): tuple(v.shape) for p, v in tree_paths.named_leaves(saved_tree)
           if hasattr(v, 'shape')}
  want = {'/'.join(p): tuple(v.shape) for p, v in tree_paths.named_leaves(abstract_tree)}
  diffs = [f'{k}: saved {saved.get(k)} vs config {want.get(k)}'
           for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)]
  more = f' (and {len(diffs) - 3} more)' if len(diffs) > 3 else ''
  return '; '.join(diffs[:3]) + more


def check_shapes(where, saved_tree, abstract_tree, advice: str) -> None:
  """ValueError naming the checkpoint and the first differing leaves, if any differ."""
  mismatch = shape_mismatch(saved_tree, abstract_tree)
  if mismatch:
    raise ValueError(f'checkpoint {where} does not match this config: {mismatch}. {advice}')


# ----------------------------------------------------------------------- manager
class Checkpoints:
  """Thin wrapper over `ocp.CheckpointManager` for the three items above."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(os.path.abspath(directory))  # Orbax needs absolute paths
    # Async saves: Orbax calls `_manifest_before_commit` once a step's files are all written,
    # before it renames the step into place, so the manifest is part of the atomic commit.
    # Directories are created synchronously, in `save`: when Orbax creates them in the
    # background and that fails (the checkpoint directory replaced by a file mid-run), the
    # writers wait on a creation signal that never comes (20 minutes, Orbax's timeout)
    # instead of failing; created up front, the failure is raised by `save` at once.
    async_options = (ocp.AsyncOptions(post_finalization_callback=self._manifest_before_commit,
                                      create_directories_asynchronously=False)
                     if async_save else None)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           async_options=async_options)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler(),
                       'progress': ocp.JsonCheckpointHandler(),
                       'data': DataIteratorHandler()})
    self._unfinished: Optional[int] = None  # the step whose save may still be in flight

  def _manifest_before_commit(self) -> None:
    """Orbax's post-finalization callback (primary host, background thread): the step in
    flight is complete in `<step>.orbax-checkpoint-tmp*`, not yet renamed into place. An
    error here fails the save (`check_for_errors`) and the step is never committed."""
    step = self._unfinished
    tmp = sorted(self.directory.glob(f'{step}.orbax-checkpoint-tmp*'),
                 key=lambda p: p.stat().mtime)
    step_dir = tmp[-1] if tmp else self.directory / str(step)  # no rename (e.g. GCS)
    integrity.write_manifest(os.fspath(step_dir), skip=(integrity.ORBAX_METADATA,))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def newest_intact_step(self) -> Optional[int]:
    """The newest step that verifies; newer bad ones are moved aside, each with a warning."""
    if jax.process_index() == 0:
      integrity.newest_intact(os.fspath(self.directory), warn, move=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('t5x_lite_checkpoint_verify')
    self.manager.reload()
    return self.manager.latest_step()

  def move_aside(self, step: int, why: str) -> None:
    """A step that verified but failed to restore: set aside like a corrupt one."""
    if jax.process_index() == 0:
      integrity.report_bad(os.fspath(self.directory), step, why, warn, move=True)
    self.manager.reload()

  def _failed(self, step, e: BaseException) -> CheckpointError:
    kept = [s for s in integrity.step_dirs(os.fspath(self.directory)) if s != step]
    cause = ' '.join(f'{type(e).__name__}: {e}'.split())
    return CheckpointError(
        f'saving checkpoint step {step} in {self.directory} failed: {cause[:300]}; earlier '
        f'checkpoints ({", ".join(map(str, sorted(kept))) or "none"}) are untouched.')

  def _finish_unfinished(self) -> None:
    """Wait for the save in flight, raise if it failed, then write its manifest."""
    step = self._unfinished
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # any background failure: the run must stop, saying so
      raise self._failed(step, e) from None
    self._unfinished = None
    step_dir = os.path.join(os.fspath(self.directory), str(step))
    if (step is not None and jax.process_index() == 0 and os.path.isdir(step_dir)
        and not os.path.exists(os.path.join(step_dir, integrity.MANIFEST))):  # sync saves
      try:
        integrity.write_manifest(step_dir)
      except OSError as e:
        raise self._failed(step, e) from None

  def check_for_errors(self) -> None:
    """Raise CheckpointError if a background save has failed (cheap; call every step).

    Orbax keeps a failure of its finalize thread (the commit) until that thread is joined:
    its own check_for_errors does not see it. So a save whose thread has ended is finished
    here, raising its failure now rather than at the next save, a checkpoint period later."""
    if self._unfinished is not None and not self.manager.is_saving_in_progress():
      self._finish_unfinished()
      return
    try:
      self.manager.check_for_errors()
    except Exception as e:
      raise self._failed(self._unfinished, e) from None

  def save(self, step: int, state: TrainState, data_iterator, config_dict: dict,
           progress: Optional[dict] = None) -> bool:
    self._finish_unfinished()
    args = {'state': ocp.args.StandardSave(state.as_dict()),
            'config': ocp.args.JsonSave(config_dict),
            'progress': ocp.args.JsonSave(progress or {})}
    if data_iterator is not None:
      args['data'] = DataIteratorSave(data_iterator)
    self._unfinished = step
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:
      raise self._failed(step, e) from None
    if not self.manager.is_saving_in_progress():
      self._finish_unfinished()  # synchronous save: write its manifest now
    return saved

  def progress(self, step: int) -> dict:
    path = self.directory / str(step) / 'progress'
    if not path.exists():
      return {}
    return self.manager.restore(step, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))['progress']

  def saved_state_tree(self, step: int):
    """The saved state's tree of array metadata (shapes), read from Orbax's metadata: an
    exception here means the step cannot be read, not that the config differs."""
    meta = self.manager.item_metadata(step)['state']
    return getattr(meta, 'tree', meta)

  def check_compatible(self, step: int, abstract_state: TrainState, saved_tree,
                       config) -> None:
    """Clear error if the step's saved config describes another network than `config`'s
    (runtime fields aside: same shapes can still mean another network, relu vs gelu, which
    eval, infer and init_from refuse too) or another optimizer-state pytree, or the saved
    state's shapes (`saved_state_tree`) differ from the config's, naming the cause where the
    step says it: another layer layout (model.scan_layers), the model or optimizer fields."""
    where, want = self.directory / str(step), abstract_state.as_dict()
    scanned = _has_scanned_layers(saved_tree.get('params', {}))
    if scanned != _has_scanned_layers(want['params']):
      raise ValueError(
          f'checkpoint {where} holds its layers {"stacked" if scanned else "one by one"} '
          f'(model.scan_layers={scanned}), this config the other way: resume with '
          f'--config.model.scan_layers={scanned} (a resumed optimizer state keeps its layout; '
          'eval, infer and config.init_from read either).')
    advice = (f'resume with the config it was saved with, or use a new --workdir (or delete '
              f'{self.directory}) to start fresh.')
    saved, path = run_config.saved_config(os.fspath(where))
    cause = run_config.model_mismatch(saved.get('model', {}), config.model, path) if saved else ''
    if cause:
      raise ValueError(f'checkpoint {where} does not match this config: {cause}; {advice}')
    from t5x_lite import optim
    changes = optim.state_layout_changes(saved['optimizer'], config.optimizer) \
        if saved and 'optimizer' in saved else []
    if changes:
      raise ValueError(
          f'checkpoint {where} holds another optimizer state than this config builds: '
          f'{"; ".join("config.optimizer." + c for c in changes)}. Nothing was moved; resume '
          f'with the optimizer settings it was saved with, or train on from its params in a '
          f'new --workdir with config.init_from={where} (fresh optimizer state).')
    check_shapes(where, saved_tree, want, advice[0].upper() + advice[1:])

  def restore(self, step: int, abstract_state: TrainState, data_iterator=None) -> TrainState:
    """The state (and with `data_iterator`, its position) of `step`; the caller has checked
    `check_compatible`."""
    args = {'state': ocp.args.StandardRestore(abstract_state.as_dict())}
    if data_iterator is not None:
      args['data'] = DataIteratorRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return TrainState(**restored['state'])

  def wait(self):
    """Finish the save in flight (CheckpointError if it failed) and write its manifest."""
    self._finish_unfinished()

  def close(self):
    self.manager.close()

  def abandon(self):
    """A save failed: leave Orbax's threads (closing would wait on that save and raise over
    the error); the command exits after reporting."""

  def finish_after_error(self):
    """Another error (a non-finite step, bad input, Ctrl-C twice) stops the run: the save in
    flight holds steps trained before it, so let it complete; its own failure is only warned
    about, never raised over the error that stopped the run."""
    try:
      self.wait()
      self.close()
    except Exception as e:  # noqa: BLE001 - the first error is the one to report
      warn(f'the checkpoint save in flight failed too: {e}')


# ------------------------------------------------------------------ finding steps
def complete_steps(directory) -> List[int]:
  """Sorted steps of `directory` (a checkpoints/ dir) whose step dir holds a state item;
  Orbax renames a step dir into place only once it is complete."""
  path = epath.Path(directory)
  if not path.is_dir():
    return []
  return sorted(int(p.name) for p in path.iterdir()
                if p.name.isdigit() and (p / 'state').is_dir())


PYTREE_METADATA = ('_METADATA', '_CHECKPOINT_METADATA')  # one is in every saved pytree directory


def latest_checkpoint(workdir: str, step: Optional[int] = None) -> Tuple[int, str]:
  """(step, path of its state item) of the newest complete checkpoint in workdir (of `step`
  when given: eval / infer --step); or, for a directory `convert --direction=hf_to_t5x`
  wrote (imported weights, as they are), (0, it): `load_params` verifies either."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = complete_steps(directory)
  if not steps:
    if os.path.exists(os.path.join(workdir, 'config.json')) and not os.path.exists(directory) \
        and any(os.path.exists(os.path.join(workdir, m)) for m in PYTREE_METADATA):
      if step:
        raise ValueError(f'--step={step}: --workdir={workdir} is a converted model, one set of '
                         'params without steps.')
      return 0, workdir
    if os.path.isdir(os.path.join(workdir, 'state')) and os.path.basename(
        os.path.normpath(workdir)).isdigit():  # a step directory: its workdir and step, then
      run = os.path.dirname(os.path.dirname(os.path.normpath(workdir)))
      raise ValueError(f'--workdir={workdir} is one checkpoint of a run: pass --workdir={run} '
                       f'--step={os.path.basename(os.path.normpath(workdir))}.')
    raise ValueError(f'--workdir={workdir} has no checkpoint (no {directory}/<step>/state) '
                     'and is no converted Hugging Face model: train one first with `python -m '
                     't5x_lite.train`, or convert one with `python -m t5x_lite.convert`.')
  if step is not None:
    if step not in steps:
      raise ValueError(f'--step={step}: {directory} has no checkpoint of that step (it has '
                       f'{", ".join(map(str, steps))}).')
    status, why = integrity.verify(os.path.join(directory, str(step)))
    if status == 'corrupt':
      raise ValueError(f'--step={step}: the checkpoint {directory}/{step} is corrupt: {why}.')
    return step, os.path.join(directory, str(step), 'state')
  step = integrity.newest_intact(directory, warn, move=False)  # read-only: skip, keep
  if step is None:
    raise ValueError(f'--workdir={workdir}: no intact checkpoint in {directory} (see the '
                     f'warnings above; `python -m t5x_lite.inspect --workdir={workdir}` '
                     'lists them).')
  return step, os.path.join(directory, str(step), 'state')


class NoCheckpointError(ValueError):
  """A directory that holds no t5x_lite checkpoint at all (not a damaged one)."""


def resolve_params_dir(directory: str) -> epath.Path:
  """A workdir, its checkpoints/, a step dir, or a plain pytree dir -> the pytree dir.

  A workdir or checkpoints/ resolves to its newest step that verifies (a newer corrupt one
  is warned about and skipped, as `latest_checkpoint` does); a step dir or converted params
  dir named directly must verify itself."""
  path = epath.Path(os.path.abspath(directory))
  if (path / 'checkpoints').exists():
    path = path / 'checkpoints'
  if complete_steps(path):
    step = integrity.newest_intact(str(path), warn, move=False)  # read-only: skip, keep
    if step is None:
      raise ValueError(f'{directory}: no intact checkpoint in {path} (see the warnings above).')
    path = path / str(step)
  else:  # a step dir itself (all of it verified), or a params dir convert wrote (its files)
    step_dir = any((path / item).exists() for item in integrity.REQUIRED_ITEMS)
    status, why = (integrity.verify if step_dir else integrity.check_manifest)(str(path))
    if status == 'corrupt':
      raise ValueError(f'{directory}: checkpoint is unusable ({why}).')
  if (path / 'state').exists():
    path = path / 'state'
  if not any((path / m).exists() for m in PYTREE_METADATA):
    from t5x_lite import conversion  # pylint: disable=import-outside-toplevel
    raise NoCheckpointError(f'{directory} holds no t5x_lite checkpoint (looked in {path})'
                     f'{conversion.hf_directory_hint(directory)}.')
  return path


def _has_scanned_layers(tree) -> bool:
  return any('layers' in path for path, _ in tree_paths.named_leaves(tree))


def _layer_layout(params, scanned: bool):
  """Params with each stack's layers stacked (`layers`, scan_layers=True) or split
  (`layers_0`..): model.scan_layers is a runtime choice, so a checkpoint of either layout
  initialises a model of the other."""
  from t5x_lite import models  # pylint: disable=import-outside-toplevel
  out = {}
  for name, stack in params.items():
    if scanned and isinstance(stack, dict):
      n = sum(1 for k in stack if k.startswith('layers_'))
      out[name] = models.stack_layers(stack, n) if n else stack
    else:
      out[name] = models.unstack_layers(stack)
  return out


def load_params(directory: str, abstract_params):
  """Only the params of a checkpoint (fine-tuning), sharded like `abstract_params`: every
  parameter must be there with the config's shape (no silent partial load). Layers saved
  stacked load into an unscanned model and the other way round."""
  path = resolve_params_dir(directory)
  meta = ocp.PyTreeCheckpointer().metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  tree = getattr(meta, 'tree', meta)
  saved_params = tree.get('params', tree) if isinstance(tree, dict) else tree
  advice = 'Pass the model config (and --config overrides) it was trained with.'
  scanned = _has_scanned_layers(abstract_params)
  if isinstance(saved_params, dict) and _has_scanned_layers(saved_params) != scanned:
    return _load_params_relaid(path, saved_params, abstract_params, scanned, advice), path
  check_shapes(path, saved_params, abstract_params, advice)
  target = {'params': abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  return restored['params'], path


def _load_params_relaid(path, saved_params, abstract_params, scanned: bool, advice: str):
  """`load_params` of a checkpoint whose layers are laid out the other way: read on the
  host in the saved layout, restack, then place with `abstract_params`' shardings."""
  plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_params)
  saved_layout = jax.eval_shape(lambda p: _layer_layout(p, not scanned), plain)
  check_shapes(path, saved_params, saved_layout, advice)
  target = {'params': saved_layout}
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                             target),
      partial_restore=True))
  params = jax.tree.map(np.asarray, _layer_layout(restored['params'], scanned))

  def place(x, a):
    sharding = getattr(a, 'sharding', None)
    if sharding is None:
      return x
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(place, params, abstract_params)


# --------------------------------------------------------------- restore precedence
def check_init_source(config) -> None:
  """ValueError unless config.init_from (a t5x_lite checkpoint, or hf:DIR) exists and holds
  a model of config.model's network; reads configs only (loading verifies the weights)."""
  if config.init_from.startswith('hf:'):
    from t5x_lite import hf_config
    directory = config.init_from[3:]
    try:  # ('hf:' alone read the working directory's config.json)
      if not os.path.isdir(directory):
        raise ValueError(f'{directory or "(nothing)"} is not a directory (hf:DIR names a '
                         'Hugging Face model directory).')
      model_cfg = hf_config.read_config(directory)[2]
    except ValueError as e:
      raise ValueError(f'config.init_from={config.init_from}: {e}') from None
    mismatch = run_config.model_mismatch(model_cfg, config.model,
                                         f'the Hugging Face model in {directory}')
    if mismatch:
      raise ValueError(f'{mismatch}.')
  elif not os.path.exists(config.init_from):
    raise ValueError(f'config.init_from={config.init_from} does not exist.')
  else:
    run_config.check_model_config(config.init_from, config.model, 'config.init_from')


def check_init_from(config, workdir: str) -> None:
  """`check_init_source` at start-up, before the data pipeline and the model are built
  (seconds, a minute on a busy host), unless the workdir has a checkpoint (which wins)."""
  if config.init_from and not integrity.step_dirs(os.path.join(workdir, 'checkpoints')):
    check_init_source(config)


def check_fresh_start(config, workdir: str) -> None:
  """ValueError if the workdir has no checkpoint but holds another network's run (its
  config.json): a fresh start would overwrite that run's config.json, metrics.jsonl and
  TensorBoard events. A run of the same network killed before its first checkpoint starts
  again as before."""
  if integrity.step_dirs(os.path.join(workdir, 'checkpoints')):
    return  # a resume: check_compatible compares the step's own config
  path = os.path.join(workdir, 'config.json')
  try:
    saved, _ = run_config.saved_config(workdir) if os.path.isfile(path) else (None, '')
  except ValueError:  # not JSON (cut short by a kill before writes were atomic): no run to keep
    saved = None
  mismatch = run_config.model_mismatch(saved.get('model', {}), config.model, path) if saved else ''
  if mismatch:
    raise ValueError(f'--workdir={workdir} holds another run without a checkpoint: {mismatch}; '
                     'a fresh start would overwrite its config.json, metrics.jsonl and '
                     'TensorBoard events: use a new --workdir, or delete those files to '
                     'start over there.')


def restore_or_init(config, trainer, ckpts: Checkpoints, train_iter):
  """Latest workdir checkpoint > config.init_from > fresh. Returns (state, one-line why)."""
  from t5x_lite.data.sources import ResumeMismatch
  had_checkpoints = bool(integrity.step_dirs(os.fspath(ckpts.directory)))
  latest = ckpts.newest_intact_step()
  while latest is not None:
    try:
      saved_tree = ckpts.saved_state_tree(latest)
    except Exception as e:  # noqa: BLE001 - its metadata unreadable (cut-short files): corrupt
      ckpts.move_aside(latest, f'metadata unreadable: {type(e).__name__}: {str(e)[:200]}')
      latest = ckpts.newest_intact_step()
      continue
    # Shapes that differ from the config's are a config mistake: no fallback.
    ckpts.check_compatible(latest, trainer.abstract_state, saved_tree, config)
    try:
      state = ckpts.restore(latest, trainer.abstract_state, train_iter)
      break
    except ResumeMismatch as e:  # the data settings changed: a config mistake, keep it
      raise ResumeMismatch(
          f'cannot resume step {latest}: {e} Nothing was moved; resume with the data settings '
          f'it was saved with, or train on from its params in a new --workdir with '
          f'config.init_from={ckpts.directory / str(latest)} (fresh data order).') from None
    except Exception as e:  # noqa: BLE001
      if 'tree structures do not match' in str(e):  # Orbax: this config builds another state
        raise ValueError(f'checkpoint {ckpts.directory / str(latest)} holds another state '
                         f'pytree than this config builds ({" ".join(str(e).split())[:300]}); '
                         f'nothing was moved: resume with the config it was saved with.') from None
      # Verified, yet unreadable: set it aside like a corrupt one.
      ckpts.move_aside(latest, f'restore failed: {type(e).__name__}: '
                       f'{" ".join(str(e).split())[:200]}')
      latest = ckpts.newest_intact_step()
  aside = ckpts.directory.parent / integrity.CORRUPT_DIR
  if latest is None and (had_checkpoints or (aside.exists() and any(aside.iterdir()))):
    raise ValueError(f'every checkpoint of this run is unusable (set aside in {aside}; see the '
                     'warnings above and `python -m t5x_lite.inspect --workdir=...`); not '
                     'starting fresh over its history: use a new --workdir to start again.')
  if latest is not None:
    why = (f'restored step {latest} from {ckpts.directory / str(latest)} (latest checkpoint '
           'in the workdir wins): params, optimizer state and data position')
    if config.init_from:
      why += f'; config.init_from={config.init_from!r} ignored because the workdir resumes'
      source = config.init_from[3:] if config.init_from.startswith('hf:') else config.init_from
      if not os.path.exists(source):  # not an error (the resume never reads it): maybe a typo
        warn(f'config.init_from={config.init_from} does not exist (ignored: the workdir '
             'resumes from its own checkpoint).')
    return state, why
  if config.init_from.startswith('hf:'):
    from t5x_lite import hf
    check_init_source(config)
    _, params = hf.load(config.init_from[3:], scan_layers=config.model.scan_layers)
    from t5x_lite import conversion
    tokenizer = conversion.tokenizer_mismatch(config.init_from[3:], config.data)
    if tokenizer:  # a warning, not an error: retraining the embeddings may be the intent
      warn(f'config.init_from={config.init_from}: {tokenizer}.')
    attention = conversion.attention_change(config.model, config.data)
    if attention:  # a warning too: T5's recipe fine-tunes decoder-only models as prefix LMs
      warn(f'config.init_from={config.init_from}: {attention}.')
    state = trainer.state_from_params(params)
    return state, (f'initialized params from Hugging Face directory {config.init_from[3:]} '
                   '(config.init_from; no checkpoint in the workdir); fresh optimizer state '
                   'and data position')
  if config.init_from:
    check_init_source(config)
    try:  # a warning, as for hf:DIR: retraining the embeddings may be the intent
      run_config.check_vocabulary(config.init_from, config.data, 'config.init_from')
    except ValueError as e:
      warn(f'{e}')
    params, path = load_params(config.init_from, trainer.abstract_state.params)
    state = trainer.state_from_params(params)
    return state, (f'initialized params from {path} (config.init_from; no checkpoint in the '
                   'workdir); fresh optimizer state, step 0 and data position')
  return trainer.init_state(config.train.seed), (
      f'fresh start from seed {config.train.seed} (no checkpoint in the workdir, no '
      'config.init_from)')
