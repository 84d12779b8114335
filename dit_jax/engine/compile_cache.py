"""JAX's persistent compilation cache, and a counter of what JAX compiles.

A restarted run (after a preemption, a crash, a raised train.steps) compiles the same programs
as the run before it; with the cache it loads them from disk instead. The folder is
train.compilation_cache_dir: by default `<workdir>/compilation_cache` (`cache_dir`), one
folder for all runs of a sweep (`dit_jax.studies.sweep`), '' for none; local or `gs://` (JAX
reads and writes it through etils.epath). JAX writes entries from process 0 only and only of
programs that took train.compilation_cache_min_compile_s or longer to compile, so on a pod the
other hosts hit only a folder they all read: a bucket.

`sample`, `eval`, `eval-ref` and `bench` use the cache of their `--compilation-cache DIR`
(`sample --workdir`: the run's own).
"""
import threading

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from dit_jax import paths

DEFAULT_DIR = "compilation_cache"
SETTINGS = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
            "jax_persistent_cache_min_compile_time_secs")
# JAX's monitoring events: the three stages of turning a function into an executable (the
# last one is XLA's compile, or the load of a persistent cache entry), and the cache's hits
# and writes.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
CACHE_HIT, CACHE_WRITE = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def cache_dir(setting: str | None, workdir) -> str | None:
  """The cache folder of train.compilation_cache_dir = `setting` for a run in `workdir`: None
  gives `<workdir>/compilation_cache`, '' gives None (no cache), a path itself."""
  if setting is None:
    return paths.absolute(paths.as_path(workdir) / DEFAULT_DIR)
  return setting or None


class CompilationCache:
  """JAX's persistent cache in `path` (local or gs://) while the `with` block runs; None: no
  persistent cache. The settings in effect before it come back after it (JAX keeps one cache
  per process: two runs one after the other in a notebook each get their own)."""

  def __init__(self, path: str | None, min_compile_s: float = 1.0):
    self.settings = dict(zip(SETTINGS, (path, path is not None, float(min_compile_s))))
    self.previous = None

  def __enter__(self):
    self.previous = {name: getattr(jax.config, name) for name in SETTINGS}
    _apply(self.settings)
    return self

  def __exit__(self, *exc):
    _apply(self.previous)


def _apply(settings: dict):
  for name, value in settings.items():
    jax.config.update(name, value)
  jax_cache.reset_cache()  # JAX opens its cache once, at the next compile: the folder set now


class CompileCounter:
  """While open: `seconds` JAX spent turning functions into executables (tracing, lowering,
  compiling or loading from the persistent cache), the cache's `hits` and `writes`. Counts
  every thread of the process."""

  def __init__(self):
    self.seconds, self.hits, self.writes = 0.0, 0, 0
    self._lock = threading.Lock()

  def _duration(self, event: str, seconds: float, **kwargs):
    if event in COMPILE_EVENTS:
      with self._lock:
        self.seconds += seconds

  def _event(self, event: str, **kwargs):
    if event in (CACHE_HIT, CACHE_WRITE):
      with self._lock:
        self.hits += event == CACHE_HIT
        self.writes += event == CACHE_WRITE

  def __enter__(self):
    monitoring.register_event_duration_secs_listener(self._duration)
    monitoring.register_event_listener(self._event)
    return self

  def __exit__(self, *exc):
    monitoring.unregister_event_duration_listener(self._duration)
    monitoring.unregister_event_listener(self._event)

  def compile_seconds(self) -> float:
    return self.seconds
