"""The package's layering: commands are leaves, modules stay short, the repo is self-contained."""
import ast
import os

from tiny_run import ROOT

PACKAGE = os.path.join(ROOT, 't5x_lite')
COMMANDS = {'t5x_lite.train', 't5x_lite.eval', 't5x_lite.infer', 't5x_lite.vocab',
            't5x_lite.convert', 't5x_lite.plan', 't5x_lite.bench', 't5x_lite.inspect',
            't5x_lite.data.bench'}


def _modules():
  """{dotted module name: path} of every module of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[dotted.removesuffix('.__init__')] = path
  return out


def _imports(path: str, module: str):
  """Dotted names a module imports, anywhere in it (function-level imports included)."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative import: resolve against the importing package
        base = '.'.join(module.split('.')[:-node.level] + ([base] if base else []))
      found.add(base)
      found.update(f'{base}.{a.name}' for a in node.names)  # `from pkg import module`
  return found


def test_no_module_imports_a_command_module():
  modules = _modules()
  assert COMMANDS <= set(modules), COMMANDS - set(modules)
  offenders = {m: sorted(_imports(p, m) & COMMANDS) for m, p in modules.items()}
  assert {m: i for m, i in offenders.items() if i} == {}


def test_no_module_over_600_lines():
  lengths = {m: sum(1 for _ in open(p, encoding='utf-8')) for m, p in _modules().items()}
  assert {m: n for m, n in lengths.items() if n > 600} == {}


# Pointers to a folder beside the repository that its users do not have (spelled in pieces so
# that this file does not contain them either).
OUTSIDE_MARKERS = ('..' + '/shared', 'reference' + ' page', 'DESIGN' + '.md')


def test_nothing_in_the_repository_points_outside_it():
  hits = []
  for folder, dirs, files in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('runs', '__pycache__')]
    for name in files:
      if name.endswith(('.py', '.md', '.txt', '.toml', '.cfg', '.sh')) or name == 'Makefile':
        path = os.path.join(folder, name)
        text = open(path, encoding='utf-8', errors='replace').read()
        if any(marker in text for marker in OUTSIDE_MARKERS):
          hits.append(os.path.relpath(path, ROOT))
  assert hits == []


def test_family_branches_live_in_the_family_table():
  """`family ==` comparisons only in families.py and the few places that say why."""
  allowed = {'t5x_lite.families', 't5x_lite.hf'}  # hf: each family maps to its own HF class
  counts = {}
  for module, path in _modules().items():
    text = open(path, encoding='utf-8').read()
    n = sum(text.count(s) for s in ("family ==", "family !=", "family in (", "family not in ("))
    if n and module not in allowed:
      counts[module] = n
  assert counts == {}
