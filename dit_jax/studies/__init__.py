"""Study tools: sweeps of training runs from a sweep file (`sweep.py`, run back to back or in
side-by-side worker processes), their summary with bootstrap intervals (`sweep_report.py`),
the two from a sweep file to its summary (`sweep_run.py`: `dit-jax sweep`), tables of FLOPs
and scores (`reports.py`) and figures (`plots.py`).

Imports: anything below it (training, eval, models); only the CLI imports it.
"""
