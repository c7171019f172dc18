"""Checkpoint integrity: a manifest written after each save, verification before use,
moving a bad checkpoint aside, and a listing of a workdir's checkpoints with their status.

A step directory `checkpoints/<step>/` is intact when
  1. Orbax finalised it: `_CHECKPOINT_METADATA` parses and carries `commit_timestamp_nsecs`
     (Orbax writes it last, just before the atomic rename into place);
  2. every item the trainer needs (`state`, `config`) is there with its Orbax metadata
     (`state/_METADATA` parses as JSON);
  3. every file listed in `MANIFEST` still has the size and CRC-32 it had when written.
With asynchronous saves (the default) the manifest is written by Orbax's post-finalization
callback, inside the step's temporary directory just before Orbax renames it into place: it
is part of the atomic commit, so every committed step has one (`_CHECKPOINT_METADATA`, which
Orbax updates with the commit timestamp after the callback, is checked by 1 instead). With
synchronous saves it is written right after the save returns; a step killed in between, or
one written before manifests existed, passes on 1 and 2 alone ('intact (no manifest)'); a
restore that still fails is caught by the caller.

A bad checkpoint is never deleted: `move_aside` renames it to `WORKDIR/corrupt_checkpoints/`
(outside Orbax's directory, so Orbax neither resumes from nor garbage-collects it) and says so.
"""
import json
import os
import time
import zlib
from typing import Dict, List, Optional, Tuple

MANIFEST = 't5x_lite_manifest.json'
ORBAX_METADATA = '_CHECKPOINT_METADATA'
REQUIRED_ITEMS = ('state', 'config')
CORRUPT_DIR = 'corrupt_checkpoints'


def _crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      crc = zlib.crc32(block, crc)
  return crc


def _files(step_dir: str, skip: Tuple[str, ...] = ()) -> List[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST and rel != f'.{MANIFEST}.tmp' and rel not in skip:
        out.append(rel)
  return sorted(out)


def write_manifest(step_dir: str, skip: Tuple[str, ...] = ()) -> None:
  """Record size and CRC-32 of every file of a finished step but `skip` (files that change
  later, e.g. `_CHECKPOINT_METADATA` before Orbax's commit); atomic: tmp file + rename."""
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                 _crc32(os.path.join(step_dir, rel))] for rel in _files(step_dir, skip)}
  tmp = os.path.join(step_dir, f'.{MANIFEST}.tmp')
  with open(tmp, 'w') as f:
    json.dump({'format': 1, 'files': files}, f)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def verify(step_dir: str) -> Tuple[str, str]:
  """('intact' | 'intact (no manifest)' | 'corrupt', what failed or '')."""
  meta_path = os.path.join(step_dir, ORBAX_METADATA)
  if not os.path.isfile(meta_path):
    return 'corrupt', f'{ORBAX_METADATA} is missing (Orbax never finalised this step)'
  try:
    meta = _read_json(meta_path)
  except (ValueError, OSError) as e:
    return 'corrupt', f'{ORBAX_METADATA} is unreadable ({e})'
  if not isinstance(meta, dict) or not meta.get('commit_timestamp_nsecs'):
    return 'corrupt', f'{ORBAX_METADATA} has no commit timestamp (save not committed)'
  for item in REQUIRED_ITEMS:
    if not os.path.isdir(os.path.join(step_dir, item)):
      return 'corrupt', f'item {item}/ is missing'
  try:
    _read_json(os.path.join(step_dir, 'state', '_METADATA'))
  except (ValueError, OSError) as e:
    return 'corrupt', f'state/_METADATA is unreadable ({e})'
  return check_manifest(step_dir)


def check_manifest(directory: str) -> Tuple[str, str]:
  """3. alone, for any directory `write_manifest` covered (a step, a converted params dir)."""
  manifest_path = os.path.join(directory, MANIFEST)
  if not os.path.exists(manifest_path):
    return 'intact (no manifest)', ''
  try:
    files: Dict[str, list] = _read_json(manifest_path)['files']
  except (ValueError, OSError, KeyError, TypeError) as e:
    return 'corrupt', f'{MANIFEST} is unreadable ({e})'
  for rel, (size, crc) in sorted(files.items()):
    path = os.path.join(directory, rel)
    if not os.path.isfile(path):
      return 'corrupt', f'{rel} is missing'
    actual = os.path.getsize(path)
    if actual != size:
      return 'corrupt', f'{rel} has {actual} bytes, {size} when written (truncated?)'
    if _crc32(path) != crc:
      return 'corrupt', f'{rel} fails its CRC-32 check (contents changed since written)'
  return 'intact', ''


def step_dirs(directory: str) -> List[int]:
  """Every numbered step directory (complete or not), newest first."""
  if not os.path.isdir(directory):
    return []
  return sorted((int(n) for n in os.listdir(directory)
                 if n.isdigit() and os.path.isdir(os.path.join(directory, n))), reverse=True)


def move_aside(directory: str, step: int) -> str:
  """Rename checkpoints/<step> to WORKDIR/corrupt_checkpoints/<step>-<time>; returns it."""
  target_dir = os.path.join(os.path.dirname(os.path.abspath(directory)), CORRUPT_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  os.replace(os.path.join(directory, str(step)), target)
  return target


def newest_intact(directory: str, warn, move: bool) -> Optional[int]:
  """The newest step that verifies. Each newer bad one: one `warn(line)` naming it and what
  failed; with `move`, it is moved aside (a resuming run), else skipped (read-only users)."""
  for step in step_dirs(directory):
    status, why = verify(os.path.join(directory, str(step)))
    if status != 'corrupt':
      return step
    report_bad(directory, step, why, warn, move)
  return None


def report_bad(directory: str, step: int, why: str, warn, move: bool) -> None:
  where = os.path.join(directory, str(step))
  if move:
    target = move_aside(directory, step)
    warn(f'checkpoint {where} is unusable ({why}); moved it aside to {target} (not deleted) '
         'and falling back to the newest intact checkpoint.')
  else:
    warn(f'checkpoint {where} is unusable ({why}); skipping it and using the newest intact '
         'checkpoint.')


def listing(workdir: str) -> List[dict]:
  """Every checkpoint of a workdir, newest first: {step, path, status, detail}."""
  directory = os.path.join(workdir, 'checkpoints')
  rows = []
  for step in step_dirs(directory):
    path = os.path.join(directory, str(step))
    status, why = verify(path)
    rows.append(dict(step=step, path=path, status=status, detail=why))
  aside = os.path.join(workdir, CORRUPT_DIR)
  if os.path.isdir(aside):
    for name in sorted(os.listdir(aside), reverse=True):
      rows.append(dict(step=int(name.split('-')[0]) if name.split('-')[0].isdigit() else None,
                       path=os.path.join(aside, name), status='moved aside',
                       detail='found unusable on resume; kept for inspection'))
  return rows
