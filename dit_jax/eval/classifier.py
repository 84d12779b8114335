"""A data set's own feature network: a small classifier trained on a bundled data set.

ImageNet Inception features mean little for 8x8 digits or 32x32 shapes, so the experiments
measure quality in the penultimate features of a classifier of the data set itself: the
Fréchet distance of samples to the test split there, and the share of class-conditional
samples the classifier assigns to their label.

    net = classifier_net("digits/8")   # trains once (~1 min on 2 CPU cores), then cached

The classifier trains on the engine like every model (checkpoints, resume) in
`<data_dir>/dit_jax_feature_nets/<name>/run`; the exported parameters and its test accuracy
land beside it (`classifier.npz`, `classifier.json`) and later calls load them.
"""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from dit_jax import data, engine, parallel, paths, state_files
from dit_jax.config import base_config
from dit_jax.convert.io import load_tensors
from dit_jax.data.arrays import ArrayIterator
from dit_jax.errors import InputError, MissingFileError
from dit_jax.eval.features import Extractor, FeatureNet
from dit_jax.state_files import read_json, write_json

FEATURE_NETS = "dit_jax_feature_nets"  # folder in the TFDS data_dir


class Classifier(nn.Module):
  """Convolutions (stride 2 while the map is larger than 4x4), global average pooling and
  a hidden layer whose activations are the features."""
  num_classes: int
  widths: tuple[int, ...] = (32, 64, 128)
  features: int = 128

  @nn.compact
  def __call__(self, images_uint8):
    x = images_uint8.astype(jnp.float32) / 127.5 - 1.0  # the training pipeline's scaling
    for i, width in enumerate(self.widths):
      stride = 2 if i > 0 and x.shape[1] > 4 else 1
      x = nn.Conv(width, (3, 3), strides=stride)(x)
      x = nn.gelu(nn.GroupNorm(num_groups=8)(x))
    pool = nn.relu(nn.Dense(self.features)(x.mean(axis=(1, 2))))
    return {"pool": pool, "logits": nn.Dense(self.num_classes)(pool)}


def classifier_config(name: str, data_dir: str | None = None,
                      steps: int = 1500) -> ml_collections.ConfigDict:
  """The engine config of a classifier run (base_config's data/optim/train/mesh sections)."""
  config = base_config()
  del config.model, config.objective, config.sample, config.evals
  config.data.update(name=name, data_dir=data_dir, batch_size=128)
  config.optim.update(lr=2e-3, warmup_steps=min(100, steps // 10), schedule="cosine",
                      weight_decay=1e-4)
  config.train.update(steps=steps, log_every=max(steps // 10, 1), checkpoint_every=0,
                      sample_every=0, ema_decay=0.0)
  config.classifier = ml_collections.ConfigDict(dict(widths=(32, 64, 128), features=128))
  return config


def cache_dir(name: str, data_dir: str | None = None):
  """The classifier's folder in the TFDS data_dir (local or gs://)."""
  root = paths.as_path(data.sources.builder(name, data_dir).data_dir_root)
  return root / FEATURE_NETS / name.replace("/", "_")


def _cached(folder) -> bool:
  """Whether the classifier was exported to `folder` (classifier.json is written last)."""
  return "classifier.json" in paths.list_names(folder)


def random_shift(images_NHWC, rng, pixels: int = 1):
  """Each image moved by up to `pixels` in each direction (zero fill): the augmentation that
  keeps a classifier of 1,500 digits from memorising them."""
  n, h, w, _ = images_NHWC.shape
  padded = jnp.pad(images_NHWC, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * pixels + 1)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, image.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def _task(model: Classifier, image_shape) -> engine.Task:
  def init(rng):
    return model.init(rng, jnp.zeros((1, *image_shape), jnp.uint8))["params"]

  def loss(params, batch, rng):
    logits = model.apply({"params": params}, random_shift(batch["image"], rng))["logits"]
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return xent, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
  return engine.Task(init=init, loss=loss, batch_keys=("image", "label"))


def train_classifier(name: str, data_dir: str | None = None, steps: int = 1500,
                     log=print) -> dict:
  """Trains the classifier of data set `name` on its train split (resuming an interrupted
  run), measures its test accuracy and writes classifier.npz / classifier.json; returns
  the info dict."""
  out = cache_dir(name, data_dir)
  config = classifier_config(name, data_dir, steps)
  images, labels = data.read_images(name, "train", data_dir)
  if labels is None:
    raise InputError(f"{name} has no class labels, so no classifier can be trained on it: "
                     "evaluate with --inception FILE instead")
  num_classes = int(data.sources.builder(name, data_dir).info.features["label"].num_classes)
  model = Classifier(num_classes, tuple(config.classifier.widths), config.classifier.features)
  plan = parallel.ShardingPlan.create(config.mesh)
  start = time.perf_counter()
  state = engine.run(_task(model, images.shape[1:]), engine.Run(
      config=config, workdir=out / "run", plan=plan,
      data=ArrayIterator({"image": images, "label": labels}, config.data.batch_size,
                         seed=config.seed, process_index=jax.process_index(),
                         process_count=jax.process_count())))
  params = jax.device_get(jax.jit(lambda p: p, out_shardings=plan.replicated())(state.params))
  net = _feature_net(name, model, params, images.shape[1:], {})
  accuracy = {"train": _accuracy(net, images, labels),
              "test": _accuracy(net, *data.read_images(name, "test", data_dir))}
  info = dict(data=name, image_shape=list(images.shape[1:]), num_classes=num_classes,
              widths=list(model.widths), features=model.features, steps=steps,
              train_accuracy=accuracy["train"], test_accuracy=accuracy["test"],
              seconds=round(time.perf_counter() - start, 1))
  if jax.process_index() == 0:
    flat = traverse_util.flatten_dict(params, sep="/")
    state_files.write_npz(out / "classifier.npz", {k: np.asarray(v) for k, v in flat.items()})
    write_json(out / "classifier.json", info, indent=2)
  log(f"trained the {name} classifier in {info['seconds']} s: test accuracy "
      f"{info['test_accuracy']:.4f} (train {info['train_accuracy']:.4f}); saved in {out}")
  return info


def _accuracy(net: FeatureNet, images, labels) -> float:
  logits = Extractor(net, batch_size=512)(images)["logits"]
  return float(np.mean(np.argmax(logits, -1) == labels))


def _feature_net(name, model, params, image_shape, info) -> FeatureNet:
  def apply(p, images):
    return model.apply({"params": p}, images)
  return FeatureNet(name, apply, params, image_shape=tuple(image_shape),
                    label_classes=model.num_classes, info=info)


def classifier_net(name: str, data_dir: str | None = None, *, train: bool = True,
                   steps: int = 1500, log=print) -> FeatureNet:
  """The feature net of data set `name`: loaded from its cache, trained first if missing
  (with `train`; else FileNotFoundError saying how to train it)."""
  out = cache_dir(name, data_dir)
  if not _cached(out):
    if not train:
      raise MissingFileError(f"no {name} classifier in {out}: train it once with `dit-jax "
                              f"train-classifier --data {name}`")
    train_classifier(name, data_dir, steps, log)
  again = f"train it again: `dit-jax train-classifier --data {name} --force`"
  info = read_json(out / "classifier.json", f"the {name} classifier", fix=f"delete it and {again}")
  try:
    params = traverse_util.unflatten_dict(load_tensors(out / "classifier.npz"), sep="/")
  except (InputError, MissingFileError) as e:  # missing, cut short, damaged
    raise type(e)(f"the {name} classifier's weights: {e}; {again}") from None
  model = Classifier(info["num_classes"], tuple(info["widths"]), info["features"])
  return _feature_net(name, model, params, info["image_shape"], info)


def ensure_classifier(name: str, data_dir: str | None = None, steps: int = 1500,
                      force: bool = False, log=print) -> dict:
  """`dit-jax train-classifier`: trains the classifier of `name` unless cached (or with
  `force`: afresh, not resuming the run of the cached one); returns its info (test and train
  accuracy, steps) with "cache", its folder."""
  if force:
    state_files.remove_tree(cache_dir(name, data_dir) / "run")
  if force or not _cached(cache_dir(name, data_dir)):
    train_classifier(name, data_dir, steps, log)
  info = classifier_net(name, data_dir, train=False).info
  return dict(info, cache=str(cache_dir(name, data_dir)))
