"""Command-line plumbing shared by every command (`python -m t5x_lite.<cmd>`).

Owns the flags every run command takes (`--config`, `--workdir`, `--num_cpu_devices`,
`--show_predictions`), quiet logging, and the error contract: a bad flag, config file,
override or input is one `error: ...` line on stderr and exit status 1, never a traceback.
That covers flag parsing too (`parse_flags`): a config file that is missing, has a syntax
error (file and line) or rejects its `:argument`, an override of an unknown field (with a
did-you-mean from the config's own field names) or of the wrong type.
Commands are leaves: they parse flags, call one library function and print; no module
imports a command module (tests/test_layering.py walks the imports).
Flags are defined by `define_common_flags()` when a module runs as a command, so importing
any of these modules has no side effects.

On Linux with glibc >= 2.35 and transparent huge pages in `madvise` mode, `run` first restarts
the command (same pid, same arguments) with `glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES:
XLA's CPU runtime maps each step's temporaries afresh, and with 4 KiB pages the kernel faults
them in one page at a time, every step (`huge_pages_environ`). Setting the tunable yourself
(`=0` to opt out) skips the restart.

A command ends without the interpreter's module teardown (`exit_without_module_teardown`):
the `atexit` hooks run, then the process exits; with TensorFlow loaded the teardown took
~1 s of every command. A command that fails in a multi-process run (jax.distributed) skips
the hooks too: JAX's would wait in jax.distributed's shutdown barrier for processes that,
blocked in a collective, never reach it (5 minutes, then an abort). Before exiting it runs
the `on_failure` hooks with its error line (`train` tells the other processes, which stop).

On CPU, `run` also leaves matrix multiplications to XLA's own dot emitter (Eigen) instead of
YNNPACK, which keeps the reductions (`xla_cpu_dots_environ`): on the x86 cores this was
measured on, the train step ran ~1.13x faster. Naming the flag in XLA_FLAGS yourself keeps
your choice.
"""
import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from typing import Callable, List, Optional

# Every command imports this module first, so this runs before anything imports TF.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

FLAGS = flags.FLAGS

# What a command body may raise for bad input; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, app.UsageError)


class FlagError(ValueError):
  """A bad command line: unknown flag, bad config file or override."""


# Default config file of each config flag. The flag itself is defined without a default:
# ml_collections would load a default (and apply the overrides) while the flag is being
# *defined*, before `parse_flags` can turn a mistake into one line.
_CONFIG_DEFAULTS = {}


def define_config_flag(default: Optional[str], help_text: str, lock_config: bool = False,
                       flag_values=FLAGS, name: str = 'config'):
  """`--config=FILE[:ARG]` (+ `--config.a.b=v` overrides); `default` used when not given."""
  config_flags.DEFINE_config_file(name, None, help_text, flag_values=flag_values,
                                  lock_config=lock_config)
  _CONFIG_DEFAULTS[(id(flag_values), name)] = default


def define_common_flags():
  if 'workdir' in FLAGS:
    return
  define_config_flag('configs/default.py', 'Config file (get_config()).')
  flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, TensorBoard).')
  flags.DEFINE_integer('num_cpu_devices', 0, 'Fake CPU devices (tests, local multi-process).')
  flags.DEFINE_integer('show_predictions', 3, 'Print this many example predictions.')


# ------------------------------------------------------------------ config flags
def _root_cause(e: BaseException) -> BaseException:
  """ml_collections and absl re-raise config errors wrapped (with the traceback as text)."""
  seen = {id(e)}
  while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
    e = e.__cause__ or e.__context__
    seen.add(id(e))
  return e


def _flag_argument(argv: List[str], name: str) -> Optional[str]:
  """The value given for --name (last one wins, as in absl), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _load_config_file(argument: str, parser):
  """The config a `--config=FILE[:ARG]` argument names, or FlagError saying why not."""
  path = argument.split(':', 1)[0]
  if not os.path.isfile(path):
    tried = '' if os.path.isabs(path) else (f'; cwd {os.getcwd()!r}, also tried relative to '
                                             'the repository root')
    raise FlagError(f'config file {path} does not exist (--config={argument}{tried}).' if path
                    else f'--config={argument} names no config file.')
  try:
    config = parser.parse(argument)
  except Exception as e:  # the user's code ran: any error is theirs, shown as one line
    cause = _root_cause(e)
    if isinstance(cause, SyntaxError):
      raise FlagError(f'config file {cause.filename} line {cause.lineno}: {cause.msg} '
                      f'(--config={argument}).') from None
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f'{path} line {frames[-1].lineno}' if frames else path
    raise FlagError(f'config file {where}: {type(cause).__name__}: {cause} '
                    f'(--config={argument}).') from None
  if type(config).__name__ == '_ErrorConfig':  # ml_collections defers load errors
    raise FlagError(f'config file {path} could not be loaded (--config={argument}).')
  if not isinstance(config, ml_collections.ConfigDict):
    raise FlagError(f'config file {path}: get_config() returned a {type(config).__name__}, not '
                    f'an ml_collections.ConfigDict (--config={argument}).')
  return config


def _field_paths(config, prefix: str = '') -> List[str]:
  paths = []
  for key in config.keys():
    value = config[key]
    paths.append(prefix + key)
    if hasattr(value, 'keys') and callable(value.keys):
      paths += _field_paths(value, prefix + key + '.')
  return paths


def check_override(config, flag_name: str, path: str) -> None:
  """FlagError naming an override of a field the config does not have, with a did-you-mean."""
  node = config
  parts = path.split('.')
  for depth, key in enumerate(parts):
    if hasattr(node, 'keys') and key in node.keys():
      node = node[key]
      continue
    here = '.'.join(parts[:depth])
    owner = f'config.{here}' if here else 'the config'
    if not hasattr(node, 'keys'):
      raise FlagError(f'--{flag_name}.{path}: config.{here} is a value, not a section.')
    close = difflib.get_close_matches(key, list(node.keys()), n=1, cutoff=0.7)
    guess = f'{here}.{close[0]}' if close and here else (close[0] if close else None)
    if guess is None:  # the key may live in another section: --config.steps -> train.steps
      same_leaf = [p for p in _field_paths(config) if p.split('.')[-1] == key]
      close = difflib.get_close_matches(path, _field_paths(config), n=1, cutoff=0.6)
      guess = (same_leaf or close or [None])[0]
    hint = f'; did you mean --{flag_name}.{guess}?' if guess else ''
    raise FlagError(f'--{flag_name}.{path}: {owner} has no field {key!r}{hint}')


def _field_key(config, path: str):
  """What an override of `path` sets: the FieldReference it shares with other paths
  (`checkpoint.period` is `train.checkpoint_every`), else the path itself."""
  *sections, key = path.split('.')
  node = config
  for section in sections:
    node = node[section]
  field = node._fields.get(key)  # pylint: disable=protected-access
  return id(field) if isinstance(field, ml_collections.FieldReference) else path


def _check_one_value_per_field(config, flag_name: str, overrides: List[str]) -> None:
  """FlagError when both names of a linked field are given different values: which one won
  would be an accident of their order. (One field given twice keeps the last, as any
  repeated absl flag: wrapper scripts append overrides to a shared list.)"""
  settings = {}  # field -> the override that set it so far
  for arg in overrides:
    if '=' not in arg:
      continue  # the `--config.a.b value` form: absl reports it
    path, value = arg[len(flag_name) + 3:].split('=', 1)
    key = _field_key(config, path)
    earlier_path, earlier_value = settings.get(key, arg).split('=', 1)
    if value != earlier_value and earlier_path != f'--{flag_name}.{path}':
      raise FlagError(f'{settings[key]} and {arg} set one field to two values '
                      f'({earlier_path[2:]} and {flag_name}.{path} are linked: one value); '
                      'give one.')
    settings[key] = arg


def _check_config_flags(argv: List[str], flag_values) -> None:
  """Load each config-file flag's file and check its overrides, before absl parses them."""
  for name in list(flag_values):
    flag = flag_values[name]
    if not isinstance(flag.parser, config_flags_impl.ConfigFileFlagParser) or flag.name != name:
      continue
    given = [a for i, a in enumerate(argv) if a.startswith(f'--{name}=') or a == f'--{name}']
    if len(given) > 1:  # absl would fail on the first override, calling it defined twice
      raise FlagError(f'--{name} is given {len(given)} times ({", ".join(given)}); give one '
                      f'config file and override its fields with --{name}.a.b=value.')
    argument = _flag_argument(argv, name)
    if argument is None:
      continue  # required-ness is checked by absl (mark_flags_as_required) or the command
    config = _load_config_file(argument, flag.parser)
    overrides = [a for a in argv if a.startswith(f'--{name}.')]
    for arg in overrides:
      check_override(config, name, arg[len(name) + 3:].split('=', 1)[0])
    _check_one_value_per_field(config, name, overrides)


def _from_repo_root(argument: str) -> str:
  """A config argument FILE[:ARG] whose relative FILE is not under the cwd but is under the
  repository root, made absolute (`vocab.resolve_path`, as data paths do); else as given."""
  from t5x_lite.data import vocab  # pylint: disable=import-outside-toplevel
  path, sep, rest = argument.partition(':')
  resolved = vocab.resolve_path(path)
  return argument if resolved == path else os.path.normpath(resolved) + sep + rest


def _with_default_configs(argv: List[str], flag_values) -> List[str]:
  """argv with `--NAME=DEFAULT` first for each config flag that was not given, and each
  config file found from the cwd, else from the repository root (`_from_repo_root`)."""
  given = [f'--{name}={default}' for (fv, name), default in _CONFIG_DEFAULTS.items()
           if fv == id(flag_values) and default and _flag_argument(argv, name) is None]
  argv = argv[:1] + given + argv[1:]
  for name in [name for (fv, name) in _CONFIG_DEFAULTS if fv == id(flag_values)]:
    for i, arg in enumerate(argv):
      if arg.startswith(f'--{name}='):
        argv[i] = f'--{name}=' + _from_repo_root(arg.split('=', 1)[1])
      elif arg == f'--{name}' and i + 1 < len(argv):
        argv[i + 1] = _from_repo_root(argv[i + 1])
    # The file first: absl refuses an override read before it ("Found --config.a=1 in argv
    # before a value for --config was specified"); the order means nothing to the user.
    files = [i for i, arg in enumerate(argv) if arg.startswith(f'--{name}=')]
    if len(files) == 1:
      argv.insert(1, argv.pop(files[0]))
  sys.argv = list(argv)  # ml_collections reads the overrides from sys.argv
  return argv


def parse_flags(argv: List[str], flag_values=FLAGS) -> List[str]:
  """absl parsing with every error as FlagError (one line); returns the positional args."""
  try:
    argv = _with_default_configs(list(argv), flag_values)
    _check_config_flags(argv[1:], flag_values)
    return flag_values(argv)
  except FlagError:
    raise
  except flags.Error as e:
    raise FlagError(str(_root_cause(e) if 'Error whilst parsing' in str(e) else e)
                    .strip().splitlines()[0]) from None


# ----------------------------------------------------------------- error contract
def report_error(e: BaseException, name: str = '') -> None:
  prefix = f'{name}: ' if name else ''
  message = ' '.join(str(e).split('\n')) or type(e).__name__
  print(f'{prefix}error: {message}', file=sys.stderr, flush=True)
  _remember_error(message)


class Terminated(BaseException):
  """SIGTERM inside `raise_on_sigterm`: unwinds like Ctrl-C, so what is being written is
  cleaned up (a BaseException, as KeyboardInterrupt: `except Exception` does not stop it)."""


@contextlib.contextmanager
def raise_on_sigterm():
  """SIGTERM (what `timeout`, `kill` and job schedulers send) raises `Terminated` in the main
  thread instead of ending the process at once, for a command that writes its output through
  a staging directory (convert): its `finally` removes what was half-written."""
  def handle(signum, frame):
    del signum, frame
    raise Terminated()
  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def call(body: Callable[[], None], name: str = '') -> int:
  """Run `body` under the error contract: 0, or 1 after one `error:` line on stderr; a
  Ctrl-C that reaches here (start-up, eval, infer: training's steps stop at a checkpoint
  instead) is one line and the shell's status 130, not a traceback; a SIGTERM turned into
  `Terminated` one line and status 143 (128 + 15, as the signal itself would give)."""
  prefix = f'{name}: ' if name else ''
  try:
    body()
  except USER_ERRORS as e:
    report_error(e, name)
    return 1
  except KeyboardInterrupt:
    _quiet_after_interrupt()
    print(f'{prefix}interrupted (Ctrl-C).', file=sys.stderr, flush=True)
    _remember_error('interrupted (Ctrl-C).')
    return 130
  except Terminated:
    _quiet_after_interrupt()
    print(f'{prefix}terminated (SIGTERM).', file=sys.stderr, flush=True)
    _remember_error('terminated (SIGTERM).')
    return 143
  return 0


def _quiet_after_interrupt() -> None:
  """The process is stopping: what the interrupted libraries leave for the garbage collector
  (Orbax's half-made asyncio loop and its never-awaited coroutines: 'Exception ignored in
  BaseEventLoop.__del__', RuntimeWarnings, up to 19 lines) is not said after the one line."""
  warnings.simplefilter('ignore')
  sys.unraisablehook = lambda unraisable: None


def check_output_location(path: str, flag: str = '--output') -> None:
  """A ValueError naming `flag` when `path` cannot be created because a file stands where
  one of its directories would be (else the command would fail at its end with a bare
  'File exists'); missing directories are fine, the commands create them."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'{flag}={path}: {parent} is a file, not a directory.')


def _quiet_thread_failure(args) -> None:
  """A background thread's exception (an Orbax async save) is re-raised to the main thread
  (`Checkpoints.check_for_errors`), which reports it in one line; its traceback is logged
  only at INFO verbosity."""
  absl_logging.info('thread %s failed', getattr(args.thread, 'name', '?'),
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _drop_orbax_background_errors(record: logging.LogRecord) -> bool:
  """Orbax logs a failed async save with its traceback; the main thread re-raises it."""
  return not (f'{os.sep}orbax{os.sep}' in record.pathname and record.levelno >= logging.ERROR
              and absl_logging.get_verbosity() < absl_logging.INFO)


_HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_pages_environ(environ, libc_version: str, thp_mode: str) -> Optional[dict]:
  """The environment to restart with so that glibc backs large allocations with transparent
  huge pages, or None when a restart would change nothing.

  Why: XLA's CPU runtime `posix_memalign`s every step's temporaries (1.6 GB at T5 v1.1 small
  dims, batch 8, 512/114); glibc mmaps and unmaps such blocks each time, and the kernel faults
  them in 4 KiB at a time: ~470,000 faults, ~11% of the step's CPU time. With the tunable,
  glibc madvises those mappings to huge pages and the faults drop over tenfold. glibc reads
  tunables only at process start, hence a restart rather than a call.

  >>> huge_pages_environ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'}, 'glibc 2.36',
  ...                    'always [madvise] never')['GLIBC_TUNABLES']
  'glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1'

  None when the tunable is already set (by the user or a restart), when the C library is not
  glibc >= 2.35 (no such tunable), or when the kernel's mode is `always` (already huge) or
  `never` (madvise has no effect)."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if _HUGE_PAGES_TUNABLE in tunables or '[madvise]' not in thp_mode:
    return None
  match = re.fullmatch(r'glibc (\d+)\.(\d+).*', libc_version)
  if not match or (int(match.group(1)), int(match.group(2))) < (2, 35):
    return None
  env = dict(environ)
  setting = f'{_HUGE_PAGES_TUNABLE}=1'
  env['GLIBC_TUNABLES'] = f'{tunables}:{setting}' if tunables else setting
  return env


# XLA's CPU dot emitters, as values of its CPU_DOT_OPTION: YNNPACK takes the dots (jaxlib's
# default), or XLA's own emitter does (the commands' choice); YNNPACK keeps the reductions.
CPU_DOT_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
CPU_DOT_EMITTERS = {'ynnpack': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
                    'xla': 'LIBRARY_FUSION_TYPE_REDUCE'}
_CPU_DOTS_FLAG = f'--{CPU_DOT_OPTION}'
CPU_DOTS_SETTING = f'{_CPU_DOTS_FLAG}={CPU_DOT_EMITTERS["xla"]}'


def xla_cpu_dots_environ(environ) -> Optional[dict]:
  """The environment with XLA_FLAGS choosing XLA's own CPU dot emitter (Eigen) over YNNPACK
  for dots and convolutions, YNNPACK still taking reductions; None when XLA_FLAGS already
  names the flag (the user's choice is kept), or when JAX_PLATFORMS leaves the CPU out
  (`launch/gpu_bench.sh`: no CPU backend to tune, and a CPU flag an accelerator machine's
  jaxlib might not know would stop XLA at start-up).

  Why: jaxlib's default sends every dot on CPU to YNNPACK. On this project's x86 build
  machine (AVX-512) single-threaded, a [4096, 512] x [512, 384] projection ran 92 vs 53
  GFLOP/s and a 1024^3 matmul 88 vs 75; the T5 v1.1 small 4+4 train step (batch 8,
  512/114), alternating in one process, 4.35 vs 4.92 s wall and 8.5 vs 9.4 s CPU (medians
  of 8). Reductions stay with YNNPACK: without it they were slower (README figures table).
  XLA reads XLA_FLAGS when it first creates a backend, so this must run before JAX computes.

  >>> xla_cpu_dots_environ({'XLA_FLAGS': '--xla_dump_to=/tmp/x'})['XLA_FLAGS']
  '--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE'
  """
  flags_now = environ.get('XLA_FLAGS', '')
  platforms = [p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if _CPU_DOTS_FLAG in flags_now or (platforms and 'cpu' not in platforms):
    return None
  env = dict(environ)
  env['XLA_FLAGS'] = f'{flags_now} {CPU_DOTS_SETTING}'.strip()
  return env


def use_xla_cpu_dots():
  """Applies `xla_cpu_dots_environ` to this process's environment (before JAX computes)."""
  env = xla_cpu_dots_environ(os.environ)
  if env is not None:
    os.environ['XLA_FLAGS'] = env['XLA_FLAGS']


def restart_with_huge_pages():
  """Re-executes this process (`sys.orig_argv`) under `huge_pages_environ`, where it applies."""
  try:
    libc_version = os.confstr('CS_GNU_LIBC_VERSION') or ''
    with open(_THP_MODE_FILE) as f:
      thp_mode = f.read()
  except (AttributeError, ValueError, OSError):  # not Linux / not glibc
    return
  env = huge_pages_environ(os.environ, libc_version, thp_mode)
  argv = getattr(sys, 'orig_argv', None)
  if env is not None and argv and sys.executable:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def run(body, needs_workdir: bool = True, name: str = ''):
  """`app.run` a command body (no arguments) with the shared set-up and error contract;
  `name` prefixes the error line (`plan: error: ...`). Sets XLA's CPU dot emitter
  (`use_xla_cpu_dots`), then restarts the process where huge pages apply
  (`restart_with_huge_pages`), which keeps that environment."""
  use_xla_cpu_dots()
  restart_with_huge_pages()
  for flag in FLAGS.get_key_flags_for_module(__name__):  # --config, --workdir, ... in --help
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  def parse(argv):
    try:
      return parse_flags(argv)
    except FlagError as e:
      report_error(e, name)
      exit_without_module_teardown(1)

  def main(argv):
    logging.basicConfig(level=logging.WARNING)
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and TF are chatty below that
    logging.getLogger('t5x_lite').setLevel(logging.WARNING)  # our warnings (bad input) show
    threading.excepthook = _quiet_thread_failure
    logging.getLogger('absl').addFilter(_drop_orbax_background_errors)

    def checked_body():
      if len(argv) > 1:
        raise FlagError(f'unexpected arguments: {" ".join(argv[1:])}')
      if needs_workdir and FLAGS.workdir is None:
        raise FlagError('--workdir is required.')
      for flag in ('num_cpu_devices', 'show_predictions'):
        if flag in FLAGS and FLAGS[flag].value < 0:
          raise FlagError(f'--{flag}={FLAGS[flag].value} must be >= 0.')
      if 'num_cpu_devices' in FLAGS and FLAGS.num_cpu_devices:
        import jax
        jax.config.update('jax_num_cpu_devices', FLAGS.num_cpu_devices)
      body()
    try:
      status = call(checked_body, name)
    except Exception as e:  # a bug: its traceback, as Python prints it, and exit status 1
      if not _multi_process():
        raise
      traceback.print_exc()
      _remember_error(' '.join(f'{type(e).__name__}: {e}'.split()))
      status = 1
    running = [t for t in threading.enumerate() if t.is_alive() and not t.daemon
               and t is not threading.current_thread()]
    if running and status == 0:
      sys.exit(status)  # Python waits for the thread, as it does by default
    if status:
      for hook in _FAILURE_HOOKS:
        try:
          hook(_error_line or f'exit status {status}')
        except Exception:  # the exit goes on; the error line said why it failed
          absl_logging.info('failure hook failed', exc_info=True)
    if running or (status and _multi_process()):
      # Background work (a failing Orbax save) is still running: interpreter shutdown, and
      # the atexit hooks, would wait for it and print its errors. It is abandoned; the error
      # line said why. A failed process of a multi-process run skips the atexit hooks too:
      # JAX's shuts jax.distributed down, which waits (shutdown_timeout, 5 minutes) at a
      # barrier the other processes, blocked in a collective, never reach, then aborts.
      flush_and_exit(status)
    exit_without_module_teardown(status)
  app.run(main, flags_parser=parse)


# The error line the command printed (without `name: error: `), for the failure hooks.
_error_line: Optional[str] = None
_FAILURE_HOOKS: List[Callable[[str], None]] = []


def _remember_error(line: str) -> None:
  global _error_line
  _error_line = line


def on_failure(hook: Callable[[str], None]) -> None:
  """Call `hook(error_line)` when the command fails, after its error line is printed and
  before the process exits (`train` tells the other processes of a multi-process run)."""
  _FAILURE_HOOKS.append(hook)


def _multi_process() -> bool:
  """Whether this process is in a jax.distributed run (never imports JAX itself)."""
  distributed = sys.modules.get('jax._src.distributed')
  state = distributed and distributed.global_state
  return bool(state and state.client is not None and (state.num_processes or 1) > 1)


def exit_without_module_teardown(status: int) -> None:
  """Exit as the interpreter would, but without finalizing every loaded module.

  Runs the `atexit` hooks (JAX's backend and `jax.distributed` shutdown, TensorFlow's, the
  iterators' in data/iterator.py, logging's flush) and flushes stdout and stderr, then ends
  the process: the module teardown that follows in a normal exit only frees memory, and
  with TensorFlow loaded it takes ~0.7 s (1.0 of a tiny 8.7 s training run). Every file a
  command writes is closed (or flushed, TensorBoard's) before it returns."""
  import atexit
  atexit._run_exitfuncs()  # what Py_Finalize runs first; the module teardown is what's left
  flush_and_exit(status)


def flush_and_exit(status: int) -> None:
  """End the process now: stdout and stderr flushed, no `atexit` hook, no teardown (any
  thread may call it: a peer's failure stops a multi-process train run, train.py)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a reader gone (`| head`) or a closed stream
      pass
  os._exit(status)
