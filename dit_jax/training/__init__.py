"""What the library trains, as tasks of the one engine (`dit_jax.engine`): the denoisers
(`denoiser.py`: DiT, U-Net, MM-DiT with an objective of `flow`; `train_and_evaluate` is what
`dit-jax train` runs, with its sample-grid hook and the evaluators of config.evals) and the
VAE (`autoencoder.py`: reconstruction + KL, export of the VAE folder).

Imports: the engine, models, flow, data, sampling and eval below it; never perf, studies or
the CLI.
"""
