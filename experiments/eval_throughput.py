"""Feature-extraction throughput of the FID Inception on this host.

    python experiments/eval_throughput.py [--inception FILE] [--batch 64] [--size 256] [--batches 4]

Without --inception the network runs on random weights (the speed is the same). Images are
uint8 of --size pixels (resized to 299 inside, as for ImageNet 256 samples); the batch is
split over every local device. Prints compile seconds and images/s after compilation.
"""
import argparse
import time

import jax
import numpy as np

from dit_jax.eval import inception
from dit_jax.eval.features import Extractor, inception_feature_net, inception_net


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--inception", help="pytorch-fid weights (default: random weights)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batches", type=int, default=4)
  args = parser.parse_args()
  if args.inception:
    net = inception_net(args.inception)
  else:
    params = jax.jit(inception.FIDInception().init)(
        jax.random.PRNGKey(0), np.zeros((1, 299, 299, 3), np.float32))["params"]
    net = inception_feature_net(params)
  extractor = Extractor(net, args.batch)
  images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3),
                                             dtype=np.uint8)
  start = time.perf_counter()
  extractor(images)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  extractor(np.concatenate([images] * args.batches))
  seconds = time.perf_counter() - start
  print(f"{jax.devices()[0].device_kind} x {jax.device_count()}: FID Inception, batch "
        f"{extractor.batch_size} of {args.size}x{args.size}: first call (compile + run) "
        f"{compile_s:.1f} s, then {args.batch * args.batches / seconds:.1f} images/s")


if __name__ == "__main__":
  main()
