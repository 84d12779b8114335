"""Drawing samples and writing them: the compiled sampler of a model (`sampler.py`:
ImageSampler, grids, batches), a training run's config and EMA parameters (`runs.py`), a
run sampled into a grid, an .npz or a sample set (`draw.py`: `dit-jax sample`), a converted
published DiT through the same ImageSampler (`converted.py`), sample sets for evaluation in
resumable chunks (`sample_set.py`), the latent pipeline (`latents.py`: extract-latents, the
one latent decoder of latent runs and converted DiTs), VAE folders (`vae_files.py`) and image
files (`images.py`: uint8, grids, PNG, NPZ).

Imports: models, flow, data, convert, parallel and the engine (checkpoints); never training,
eval, perf, studies or the CLI.
"""
