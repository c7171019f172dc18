"""The config saved with a run (its workdir's config.json, or a checkpoint step's own
`config` item) and what this run's config must agree with it on: the network
(`model_mismatch`: every model field but the runtime ones) and the vocabulary
(`check_vocabulary`). Resume, eval, infer, fine-tuning and conversion read it here."""
import json
import os


# Model fields that do not change what the weights mean: runtime choices and the initializer.
RUNTIME_MODEL_FIELDS = ('dropout_rate', 'dropout_sites', 'dtype', 'scan_layers', 'remat',
                        'attention_impl', 'init_scheme')


def model_mismatch(saved_model: dict, model_cfg, source: str) -> str:
  """'' if `saved_model` (a config.json's "model") describes the same network as `model_cfg`
  (runtime fields aside), else one sentence naming every field that differs (so one rerun
  can fix them all)."""
  diffs = []
  for key, saved in sorted(saved_model.items()):
    if key in RUNTIME_MODEL_FIELDS or key not in model_cfg:
      continue
    want = model_cfg[key]
    if (list(want) if isinstance(want, (list, tuple)) else want) != (
        list(saved) if isinstance(saved, (list, tuple)) else saved):
      diffs.append((key, want, saved))
  if not diffs:
    return ''
  (key, want, saved), more = diffs[0], diffs[1:]
  return (f'config.model.{key}={want!r} differs from {source} ({saved!r})' +
          ('; so do ' + ', '.join(f'{k}={w!r} ({s!r})' for k, w, s in more) if more else ''))


def saved_config(directory: str):
  """(config dict, where it was read) saved with `directory` (a workdir or converted
  checkpoint: its config.json; a step directory, its checkpoints/ or state/: the step's own
  `config` item), or (None, '') when there is none."""
  from t5x_lite import checkpoints  # pylint: disable=import-outside-toplevel (it imports us)
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    try:
      params_dir = checkpoints.resolve_params_dir(directory)
    except ValueError:
      return None, ''
    step_dir = params_dir.parent if params_dir.name == 'state' else params_dir
    path = os.fspath(step_dir / 'config' / 'metadata')  # JsonCheckpointHandler's file
    if not os.path.isfile(path):
      return None, ''
  with open(path) as f:
    return json.load(f), path


def check_model_config(directory: str, model_cfg, what: str) -> None:
  """ValueError if `directory` (a workdir, a converted checkpoint or a step directory; `what`
  names the flag that gave it) saved a config whose model differs from `model_cfg` (same
  shapes can still mean another network: relu vs gelu)."""
  saved, path = saved_config(directory)
  if saved is None:
    return
  mismatch = model_mismatch(saved.get('model', {}), model_cfg, path)
  if mismatch:
    raise ValueError(f'{what}={directory}: {mismatch}; pass the model config (and --config '
                     'overrides) it was trained with.')


def check_vocabulary(directory: str, data_cfg, what: str) -> None:
  """ValueError if the run in `directory` trained with another SentencePiece model (byte for
  byte) or extra_ids than `data_cfg`: its ids would read as other text, silently. Nothing to
  compare (a converted directory, a saved vocabulary no longer found) is fine."""
  import filecmp  # pylint: disable=import-outside-toplevel
  from t5x_lite.data.vocab import resolve_path  # pylint: disable=import-outside-toplevel
  saved, path = saved_config(directory)
  data = (saved or {}).get('data') or {}
  theirs, mine = resolve_path(data.get('vocab') or ''), resolve_path(data_cfg.vocab)
  if data.get('extra_ids', data_cfg.extra_ids) != data_cfg.extra_ids or (
      os.path.isfile(theirs) and os.path.isfile(mine) and not filecmp.cmp(theirs, mine, False)):
    raise ValueError(
        f'{what}={directory} was trained with data.vocab={data.get("vocab")!r} and data.'
        f'extra_ids={data.get("extra_ids")} ({path}), not config.data.vocab={data_cfg.vocab!r} '
        f'with extra_ids={data_cfg.extra_ids}: its token ids would read as other text; pass '
        'the data config it was trained with.')
