"""`digits`: scikit-learn's bundled 8x8 handwritten digits as a TFDS data set.

The 1,797 images ship inside the scikit-learn wheel (`sklearn/datasets/data/digits.csv.gz`), so
preparing needs no network. Pixel values 0..16 are rescaled to uint8 0..255; configs `8`, `16`
and `32` store the images at that resolution (bilinear, from the 8x8 grid). Splits are fixed:
the first 1,500 rows are `train`, the last 297 `test`. `index` is the row in `load_digits()`.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_TRAIN = 1500  # rows [0, 1500) train, [1500, 1797) test


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  resolution: int = 8  # stored image side in pixels


def digit_images() -> tuple[np.ndarray, np.ndarray]:
  """All digits as ((N, 8, 8) uint8 in 0..255, (N,) int labels) from the file in sklearn."""
  from sklearn.datasets import load_digits  # imported here: only preparing needs sklearn
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return images, digits.target


def resize_gray(image_HW: np.ndarray, resolution: int) -> np.ndarray:
  """(h, w) uint8 -> (resolution, resolution, 1) uint8; bilinear (no ringing on 8x8 strokes)."""
  if image_HW.shape != (resolution, resolution):
    image_HW = np.asarray(Image.fromarray(image_HW).resize(
        (resolution, resolution), Image.Resampling.BILINEAR))
  return image_HW[..., None]


class Digits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits 0-9 (scikit-learn's copy of the UCI optical digits test set)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DigitsConfig(name=str(r), resolution=r, description=f"{r}x{r} grayscale")
      for r in (8, 16, 32)]

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": np.int32,
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
        citation="Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten "
                 "Digits. UCI Machine Learning Repository.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    images, labels = digit_images()
    rows = np.arange(len(labels))
    return {
        "train": self._generate_examples(images, labels, rows[:NUM_TRAIN]),
        "test": self._generate_examples(images, labels, rows[NUM_TRAIN:]),
    }

  def _generate_examples(self, images, labels, rows):
    r = self.builder_config.resolution
    for i in rows:
      # A PIL image is PNG-encoded by TFDS without TensorFlow (numpy arrays would need TF).
      image = Image.fromarray(resize_gray(images[i], r)[..., 0])
      yield int(i), {"image": image, "label": int(labels[i]), "index": int(i)}
