"""Speed and memory of the real programs: `bench.py` times the train step and the sampler on
the devices at hand (`dit-jax bench`); `aot.py` compiles them ahead of time for a Cloud TPU
slice (`tpu.py`) or an NVIDIA GPU host (`gpu.py`) without that hardware (`dit-jax aot`);
`hlo.py` reads the optimized HLO (loops, collectives, op regions).

Imports: the engine, training's tasks, sampling, models and flow; never studies or the CLI.
"""
