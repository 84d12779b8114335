"""A sweep from its file to its summary: what `dit-jax sweep` does, callable from a notebook.

    run_sweep("configs/sweeps/conditioning.py", "runs/conditioning", ["train.steps=200"])

Apart from `sweep` (which `sweep_report` imports) so that the two modules import no cycle.
"""
from dit_jax import paths
from dit_jax.errors import RunFailedError
from dit_jax.studies import sweep, sweep_report


def worker_argv(config: str, workdir, overrides, seeds, names=None) -> list[str]:
  """The `dit-jax sweep` arguments a side-by-side worker gets: the same sweep and overrides."""
  return ["--config", config, "--workdir", str(workdir), *[f"--config.{o}" for o in overrides],
          *(["--seeds", ",".join(map(str, seeds))] if seeds is not None else []),
          *(["--runs", ",".join(names)] if names is not None else [])]


def run_sweep(config: str, workdir, overrides=(), *, parallel: int = 1, devices_per_run: int = 1,
              seeds=None, runs=None, report_only: bool = False, shard: tuple[int, int] = (0, 1),
              log=print) -> dict:
  """Trains the runs not yet finished (of `seeds` and the named `runs` only, when given; back
  to back, or in `parallel` worker processes), then writes the summary of the whole sweep
  (results.jsonl, results.md, plots; worker shards leave it to their parent) and returns
  sweep_report.write's paths (None for a shard). Raises RunFailedError when runs or workers
  failed; engine.Preempted (a signal) propagates, the run saved, and with `parallel` workers
  sweep.WorkersStopped, once the workers saved theirs."""
  base, whole = sweep.load(config, list(overrides))
  spec = whole if seeds is None else sweep.with_seeds(whole, seeds)
  spec = spec if runs is None else sweep.with_runs(spec, runs)
  root = paths.as_path(workdir)
  count = len(sweep.expand(spec, root))
  log(f"sweep {spec.title!r}: {count} runs ({count // len(spec.seeds)} settings x "
      f"{len(spec.seeds)} seeds) in {root}")
  failed = 0
  if report_only:
    pass  # only the summary below
  elif parallel > 1:
    argv = worker_argv(config, workdir, overrides, spec.seeds if seeds is not None else None,
                       runs)
    failed = sweep.run_side_by_side(argv, parallel, devices_per_run, root, log)
  else:
    status = sweep.run_all(base, spec, root, shard, log)
    log(", ".join(f"{n} {what}" for what, n in status.items()))
    failed = status["failed"]
  report = None
  if shard == (0, 1):  # a side-by-side worker leaves the summary to its parent
    # of the whole sweep: a call for some seeds or runs adds to what earlier calls trained
    report = sweep_report.write(whole, root, log)
    log(report["table"].read_text())
    log(f"wrote {report['results']}, {report['table']} and {len(report['plots'])} plots; "
        f"{report['finished']} of {len(sweep.expand(whole, root))} runs finished")
  if failed:
    raise RunFailedError(f"{failed} {'workers' if parallel > 1 else 'runs'} failed (error.txt "
                         f"in their run directories, logs in {root / 'logs'}); rerun the same "
                         "command to retry them")
  return report
