"""Reliability probe (issue 31): 166 cases tried as a new user would, each through
`dit-jax` subprocesses on tiny runs in a temporary folder, and each outcome classified.

    python experiments/reliability_probe.py [--jobs 2] [--only TEXT] [--keep DIR]
        [--out experiments/results/reliability_probe]

The cases (experiments/reliability_cases.py) cover issue 31's items 1-10 and their
neighbours: damaged, missing or garbage state files of every kind, signals at every phase,
concurrent use, a full disk (faked in the process: ENOSPC from one write), bad flags and
config values. Each case says what "ok" means: the exit status, a message naming the file,
field or flag, no traceback, nothing lost. Outcomes, worst first:

    crash          a Python traceback on stderr
    hang           a command ran past its time limit
    lose-or-brick  work lost, or a state that a rerun cannot get past
    silent         exit 0 where something was wrong and nothing said so
    unclear        the right kind of failure, but the wrong exit status or a message that does
                   not name the file, field or fix
    ok

One tiny run, sample set, reference, VAE, latent set, latent run and sweep are made once
(through the CLI) and copied into each case's folder. Subprocesses run with JAX_PLATFORMS=cpu,
a shared persistent compilation cache and XLA's fast compile level (as tests/conftest.py) so
that they fit in 15 minutes on 2 idle cores (about 40 on the shared ones it was run on).
Writes README.md and
reliability_probe.json to --out.
"""
import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import reliability_cases

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("ok", "unclear", "silent", "lose-or-brick", "hang", "crash")
TRACEBACK = "Traceback (most recent call last)"
CLI_PRELUDE = "import sys\nfrom dit_jax import cli\n"


@dataclasses.dataclass
class Proc:
  """One finished command: its exit status (None: killed at its time limit) and output."""
  argv: list
  status: int | None
  out: str
  err: str
  seconds: float

  @property
  def text(self) -> str:
    return self.out + self.err

  def last_line(self) -> str:
    lines = [line for line in self.err.splitlines() + self.out.splitlines() if line.strip()
             and "absl::InitializeLog" not in line and "cudart_stub" not in line]
    return lines[-1][:300] if lines else ""


class Ctx:
  """A case's folder, the fixtures, the commands it ran and its verdicts (the worst wins)."""

  def __init__(self, root: Path, fixtures: dict, env: dict, name: str):
    self.dir = root / "cases" / name
    self.dir.mkdir(parents=True)
    self.fx, self.env, self.procs, self.verdicts, self.started = fixtures, env, [], [], 0
    self.popens = []

  # -- running commands -------------------------------------------------------------------
  def _argv(self, args) -> list:
    return [sys.executable, "-m", "dit_jax.cli", *map(str, args)]

  def start(self, *args, python: str | None = None, env: dict | None = None):
    """A command started in the background (stdout / stderr to files in the case folder)."""
    argv = ([sys.executable, "-c", CLI_PRELUDE + textwrap.dedent(python)
             + "\ncli.main(sys.argv[1:])\n", *map(str, args)] if python else self._argv(args))
    n, self.started = self.started, self.started + 1
    out, err = open(self.dir / f"p{n}.out", "w"), open(self.dir / f"p{n}.err", "w")
    popen = subprocess.Popen(argv, cwd=self.dir, stdout=out, stderr=err, text=True,
                             env={**self.env, **(env or {})}, start_new_session=True)
    popen.files, popen.started, popen.argv_ = (out, err), time.time(), argv
    self.popens.append(popen)
    return popen

  def finish(self, popen, timeout: float = 240) -> Proc:
    """Waits for a started command (killing it, and its group, at `timeout`)."""
    try:
      status = popen.wait(timeout=max(1.0, timeout - (time.time() - popen.started)))
    except subprocess.TimeoutExpired:
      os.killpg(popen.pid, signal.SIGKILL)
      popen.wait()
      status = None
    for f in popen.files:
      f.close()
    out, err = (Path(f.name).read_text(errors="replace") for f in popen.files)
    proc = Proc([a if len(a) < 200 else a[:60] + "..." for a in popen.argv_[2:]], status, out,
                err, time.time() - popen.started)
    self.procs.append(proc)
    return proc

  def dit(self, *args, timeout: float = 240, **kwargs) -> Proc:
    """`dit-jax ARGS` run to its end."""
    return self.finish(self.start(*args, **kwargs), timeout)

  def wait_for(self, condition, seconds: float = 120, popen=None) -> bool:
    """Polls `condition()` every 20 ms; False at `seconds` or when `popen` ended first."""
    deadline = time.time() + seconds
    while time.time() < deadline:
      if condition():
        return True
      if popen is not None and popen.poll() is not None:
        return condition()
      time.sleep(0.02)
    return False

  def copy(self, fixture: str, name: str | None = None) -> Path:
    """A copy of a fixture (file or folder) in the case folder."""
    source = Path(self.fx[fixture])
    target = self.dir / (name or source.name)
    if source.is_dir():
      shutil.copytree(source, target, symlinks=True)
    else:
      shutil.copy(source, target)
    return target

  # -- verdicts -----------------------------------------------------------------------------
  def verdict(self, outcome: str, note: str):
    self.verdicts.append((outcome, note))

  def expect(self, p: Proc, status, *says: str, what: str = "") -> bool:
    """Judges one command: `status` (an int or a set) and the texts its output must hold.
    A traceback is a crash, a time-out a hang; a command expected to succeed that fails is a
    brick (a rerun cannot get past it), one expected to fail that succeeds is silent; a
    missing message is silent after a success, unclear after a failure."""
    wanted = {status} if isinstance(status, int) else set(status)
    label = f"{what or ' '.join(p.argv[:3])}: "
    if p.status is None:
      self.verdict("hang", f"{label}no exit in {p.seconds:.0f} s")
    elif TRACEBACK in p.err:
      first = p.err[p.err.index(TRACEBACK):].splitlines()
      self.verdict("crash", f"{label}exit {p.status}, traceback ... {first[-1][:200]}")
    elif p.status not in wanted and 0 in wanted:
      self.verdict("lose-or-brick", f"{label}exit {p.status}, expected {sorted(wanted)}: "
                                    f"{p.last_line()}")
    elif p.status not in wanted and p.status == 0:
      self.verdict("silent", f"{label}exit 0, expected {sorted(wanted)}: {p.last_line()}")
    elif p.status not in wanted:
      self.verdict("unclear", f"{label}exit {p.status}, expected {sorted(wanted)}: "
                              f"{p.last_line()}")
    else:
      missing = [s for s in says if s.lower() not in p.text.lower()]
      if missing:
        self.verdict("silent" if p.status == 0 else "unclear",
                     f"{label}exit {p.status} without {missing!r}: {p.last_line()}")
      else:
        return True
    return False

  def kept(self, condition: bool, what: str) -> bool:
    """Nothing lost: `what` must hold, else the case lost work (or cannot go on)."""
    if not condition:
      self.verdict("lose-or-brick", what)
    return bool(condition)

  def said(self, condition: bool, what: str, outcome: str = "silent") -> bool:
    if not condition:
      self.verdict(outcome, what)
    return bool(condition)

  def outcome(self) -> tuple[str, str]:
    if not self.verdicts:
      return "ok", ""
    worst = max(self.verdicts, key=lambda v: OUTCOMES.index(v[0]))
    return worst[0], "; ".join(note for o, note in self.verdicts if o != "ok")


def environment(root: Path) -> dict:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if "device_count" not in f] + ["--xla_backend_optimization_level=0"]
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags),
              PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
              JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="3",
              PYTHONUNBUFFERED="1")


def run_case(case, root: Path, fixtures: dict, env: dict) -> dict:
  ctx = Ctx(root, fixtures, env, case.name)
  start = time.time()
  try:
    case.fn(ctx)
    outcome, note = ctx.outcome()
  except Exception as e:  # noqa: BLE001  a broken case is reported, the others go on
    outcome, note = "unclear", f"the probe's case failed: {type(e).__name__}: {e}"
  finally:
    for popen in ctx.popens:  # nothing outlives its case
      if popen.poll() is None:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
  return dict(item=case.item, name=case.name, what=case.what, outcome=outcome, note=note,
              seconds=round(time.time() - start, 1),
              commands=[dict(argv=p.argv, status=p.status, seconds=round(p.seconds, 1),
                             last=p.last_line()) for p in ctx.procs])


def write_report(rows: list[dict], out: Path, seconds: float, rerun: list[str]):
  out.mkdir(parents=True, exist_ok=True)
  counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
  (out / "reliability_probe.json").write_text(json.dumps(
      dict(counts=counts, seconds=round(seconds), rerun=rerun, cases=rows), indent=1) + "\n")
  lines = [
      "# Reliability probe (issue 31)", "",
      f"{len(rows)} cases tried through `dit-jax` subprocesses on tiny runs by "
      "[experiments/reliability_probe.py](../../reliability_probe.py) (the cases: "
      "[reliability_cases.py](../../reliability_cases.py)) in "
      f"{seconds / 60:.1f} min on a shared 2-core CPU machine. Each case defines \"ok\": the "
      "exit status, a message naming the file, field or flag and the fix, no traceback, "
      "nothing lost. Rerun: `python experiments/reliability_probe.py` (15-40 minutes, by the "
      "machine's load).", "",
      *([f"Run again alone after the full run (`--only`, results merged): "
         f"{', '.join(f'`{n}`' for n in rerun)}.", ""] if rerun else []),
      "| outcome | cases |", "|---|---|",
      *[f"| {o} | {counts[o]} |" for o in OUTCOMES], "",
      "Outcomes: *crash* a Python traceback on stderr; *hang* past the command's time limit; "
      "*lose-or-brick* work lost or a state no rerun gets past; *silent* exit 0 where "
      "something was wrong and nothing said so; *unclear* the right kind of failure with the "
      "wrong exit status or a message that names no file, field or fix.", "",
      "| item | case | what is tried | outcome | note |", "|---|---|---|---|---|"]
  for r in rows:
    note = r["note"].replace("|", "\\|").replace("\n", " ")[:300]
    lines.append(f"| {r['item']} | `{r['name']}` | {r['what']} | {r['outcome']} | {note} |")
  explained = [r for r in rows if r["outcome"] != "ok" and r["name"] in
               reliability_cases.EXPLAINED]
  if explained:
    lines += ["", "## Not ok, and why", ""]
    lines += [f"- `{r['name']}` ({r['outcome']}): {reliability_cases.EXPLAINED[r['name']]}"
              for r in explained]
  (out / "README.md").write_text("\n".join(lines) + "\n")
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--jobs", type=int, default=2, help="cases run side by side")
  parser.add_argument("--only", default="", help="only cases whose name contains one of these "
                      "comma-separated texts (merged "
                      "into the results of the last full run in --out, if any)")
  parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary "
                      "folder, removed)")
  parser.add_argument("--out", default=str(REPO / "experiments" / "results" /
                                           "reliability_probe"))
  parser.add_argument("--report", action="store_true", help="only write README.md again from "
                      "the reliability_probe.json in --out")
  args = parser.parse_args()
  if args.report:
    last = json.loads((Path(args.out) / "reliability_probe.json").read_text())
    write_report(last["cases"], Path(args.out), last["seconds"], last.get("rerun", []))
    return
  root = Path(args.keep or tempfile.mkdtemp(prefix="reliability_probe_")).absolute()
  if args.keep and (root / "cases").exists():
    shutil.rmtree(root / "cases")
  root.mkdir(parents=True, exist_ok=True)
  env = environment(root)
  start = time.time()
  fixtures = reliability_cases.make_fixtures(root, env)
  print(f"fixtures ready in {time.time() - start:.0f} s ({root})", flush=True)
  cases = [c for c in reliability_cases.CASES if any(o in c.name for o in args.only.split(","))]
  alone = [c for c in cases if c.alone]
  rows = {}

  def done(row):
    rows[row["name"]] = row
    print(f"{len(rows):3d}/{len(cases)} {row['outcome']:13s} {row['name']} "
          f"({row['seconds']:.0f} s) {row['note'][:160]}", flush=True)
  with concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
    for future in concurrent.futures.as_completed(
        [pool.submit(run_case, c, root, fixtures, env) for c in cases if not c.alone]):
      done(future.result())
  for c in alone:  # timing-sensitive (signals, races): one at a time
    done(run_case(c, root, fixtures, env))
  seconds, rerun, previous = time.time() - start, [], Path(args.out) / "reliability_probe.json"
  if args.only and previous.exists():  # a partial run: merged into the last full one
    last = json.loads(previous.read_text())
    seconds, rerun = last["seconds"], sorted(set(last.get("rerun", [])) | set(rows))
    rows = {**{r["name"]: r for r in last["cases"]}, **rows}
  ordered = [rows[c.name] for c in reliability_cases.CASES if c.name in rows]
  counts = write_report(ordered, Path(args.out), seconds, rerun)
  print(" ".join(f"{o}={n}" for o, n in counts.items()), f"in {seconds / 60:.1f} min")
  if not args.keep:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
