"""Evaluation of generated images, as the DiT-family papers report it.

metrics     FID / sFID, Inception Score, precision / recall, conditional accuracy (pure numpy)
inception   the FID Inception-v3 with pytorch-fid's weights, and its preprocessing
classifier  a bundled data set's own feature net, trained once on the engine and cached
features    FeatureNet and the batched, sharded Extractor
evaluate    references (ours, ADM's), `evaluate`, `feature_net(spec)`; the 'samples' evaluator
composition the exact check of captioned shapes samples; the 'composition' evaluator
evaluators  config.evals: the registry of evaluator kinds, turned into engine hooks

Imports: sampling (evaluators draw samples), the engine (hooks, the classifier's training),
models' contract, data; never training, perf, studies or the CLI.
"""
