"""The one training engine: what every training run of the library goes through.

Owns the train state (`state.py`: TrainState with the optimizer and EMA inside, the `Task`
= init + loss, the pure jitted step, `prepare`), the loop with its hooks (`loop.py`: restore,
train, save; divergence guard, profiler, periodic hooks), stopping on a signal at the same
step on every process (`stopping.py`), Orbax checkpoints (`checkpoint.py`), the one-writer lock of a
run directory (`workdir_lock.py`), the run's log (`run_log.py`: console, TensorBoard,
metrics.jsonl) with its goodput and MFU (`goodput.py`), and JAX's persistent compilation cache
(`compile_cache.py`).

Imports: `config`, `parallel` and the libraries below them; never a model family, a data
set, a sampler or an evaluator (tasks and hooks are handed in by `dit_jax.training`).
"""
from dit_jax.engine.loop import (DivergenceError, DivergenceGuard, Periodic, Run, check_resume,
                                 is_due, run, start_from)
from dit_jax.engine.state import (EMA, CheckpointableIterator, Prepared, StepFn, Task,
                                  TrainState, abstract_params, create_state, decay_mask,
                                  ema_of, init_params, init_state, learning_rate_schedule,
                                  logical_param_specs, make_optimizer, make_step_fn, prepare,
                                  state_shardings, train_step, with_shardings)
from dit_jax.engine.stopping import Preempted, StopAgreement, StopSignals

__all__ = ["abstract_params", "check_resume", "CheckpointableIterator", "create_state",
           "decay_mask", "DivergenceError", "DivergenceGuard", "EMA", "ema_of", "init_params",
           "init_state", "is_due", "learning_rate_schedule", "logical_param_specs",
           "make_optimizer", "make_step_fn", "Periodic", "Preempted", "prepare", "Prepared", "Run",
           "run", "start_from", "state_shardings", "StepFn", "StopAgreement", "StopSignals", "Task",
           "train_step", "TrainState", "with_shardings"]
