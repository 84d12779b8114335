"""Evaluation of generated images, as the DiT-family papers report it.

metrics     FID / sFID, Inception Score, precision / recall, conditional accuracy (pure numpy)
inception   the FID Inception-v3 with pytorch-fid's weights, and its preprocessing
classifier  a bundled data set's own feature net, trained once on the engine and cached
features    FeatureNet and the batched, sharded Extractor
evaluate    references (ours, ADM's), `evaluate`, and `feature_net(spec)`
"""
