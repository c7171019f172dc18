"""One line of a JSONL or TSV file as the texts of its fields, with no TensorFlow: the
pipeline's file sources (files.py, inside `tf.py_function`) and the vocab command read
records through these same parsers, so both keep and skip the same lines.

    parse = jsonl_parser(('text',), skips, 'skip')
    parse('a.jsonl', 3, b'{"text": 1.50}', None)   # -> ('1.50',)
    parse('a.jsonl', 4, b'{"text": [1]}', None)     # -> None; skips: field 'text' is not ...
"""
from __future__ import annotations

import json

from t5x_lite.data.sources import DataError, bad_input


def nonempty_line(path, n, raw, skips, policy, count=True):
  """(text, 'path:n') of a record line, or None after counting (when `count`) an
  undecodable or empty one."""
  where = f'{path}:{n}'
  try:
    line = raw.decode('utf-8').rstrip('\r')
  except UnicodeDecodeError as e:
    bad_input(policy, skips, 'invalid UTF-8', where,
              f'byte {raw[e.start]:#04x} at column {e.start + 1}', count)
    return None
  if not line.strip():
    if count:
      skips.add('empty line', where)
    return None
  return line, where


class NumberText(str):
  """A JSON number as the line writes it: "1.50" stays 1.50 (a regression or QA target
  scored by exact match), not Python's 1.5."""


def _not_json(constant: str):
  raise ValueError(f'{constant} is not JSON (Python writes it for a non-finite float)')


def loads(line: str):
  """One JSON line, numbers as `NumberText`; NaN / Infinity, and nesting deeper than Python's
  parser recurses, are a ValueError (a line to skip, not a crash of the pipeline)."""
  try:
    return json.loads(line, parse_int=NumberText, parse_float=NumberText,
                      parse_constant=_not_json)
  except RecursionError:
    raise ValueError('nested too deeply to parse') from None


def jsonl_parser(fields, skips, policy):
  """parse(path, n, raw line, header, count) -> tuple of field texts, or None (counted
  when `count`)."""
  def parse(path, n, raw, _, count=True):
    checked = nonempty_line(path, n, raw, skips, policy, count)
    if checked is None:
      return None
    line, where = checked
    try:
      obj = loads(line)
    except ValueError as e:  # JSONDecodeError, or NaN / Infinity
      return bad_input(policy, skips, 'invalid JSON', where,
                       e.msg if isinstance(e, json.JSONDecodeError) else str(e), count)
    if not isinstance(obj, dict):
      return bad_input(policy, skips, 'JSON line is not an object', where, '', count)
    rec = []
    for f in fields:
      if f not in obj:
        return bad_input(policy, skips, f'missing field {f!r}', where, f'fields are {sorted(obj)}',
                         count)
      v = obj[f]
      if isinstance(v, NumberText):
        v = str(v)
      if not isinstance(v, str):
        return bad_input(policy, skips, f'field {f!r} is not a string or number', where,
                         f'{json.dumps(v)[:40]}', count)
      try:  # only a \u escape can spell a lone surrogate: most lines skip the check
        if '\\u' in line:
          v.encode('utf-8')
      except UnicodeEncodeError as e:
        return bad_input(policy, skips, f'field {f!r} is not valid Unicode', where,
                         f'{e.reason} at character {e.start + 1}', count)
      if not v.strip():
        if count:
          skips.add(f'empty field {f!r}', where)
        return None
      rec.append(v)
    return tuple(rec)
  return parse


def tsv_parser(fields, skips, policy):
  def parse(path, n, raw, header, count=True):
    header = header.rstrip('\r').split('\t')
    missing = [f for f in fields if f not in header]
    twice = [f for f in fields if header.count(f) > 1]  # which column is meant?
    if missing or twice:  # a setup error, whatever the policy; skips.error: tf.data wraps
      skips.error = DataError(  # what we raise
          f'{path}:1: TSV header {header} ' + (
              f'has no field {missing[0]!r} (the first line of a TSV source names its '
              'columns).' if missing else f'names the column {twice[0]!r} twice.'))
      raise skips.error
    checked = nonempty_line(path, n, raw, skips, policy, count)
    if checked is None:
      return None
    line, where = checked
    row = line.split('\t')
    if len(row) != len(header):
      return bad_input(policy, skips, 'TSV row with wrong number of columns', where,
                       f'{len(row)} columns, header has {len(header)}', count)
    rec = tuple(row[header.index(f)] for f in fields)
    empty = [f for f, v in zip(fields, rec) if not v.strip()]
    if empty:
      if count:
        skips.add(f'empty field {empty[0]!r}', where)
      return None
    return rec
  return parse
