"""The data fields a pipeline reads, taken from a dict, an ml-collections ConfigDict or any
object with attributes, so trainers can pass their `config.data` section as it is."""
import dataclasses
from collections.abc import Mapping
from typing import Any

from dit_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class DataConfig:
  name: str                      # TFDS name with config: "digits/16", "shapes/single_32", ...
  split: str = "train"           # any TFDS split spec: "train", "test", "train[:90%]"
  data_dir: str | None = None    # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
  image_size: int | None = None  # square side to crop/resize to; None keeps stored size
  batch_size: int = 64           # global: summed over all processes
  seed: int = 0                  # shuffle seed, 0 <= seed < 2**32
  shuffle: bool = True           # reshuffled every epoch
  num_threads: int = 8           # reader threads per process (each builds whole batches)
  prefetch: int = 4              # batches buffered ahead per process
  worker_count: int = 0          # >0: decode in that many grain worker processes
  text_tokenizer: str | None = None  # 'words:shapes' | 'bytes': batches carry the caption as
                                 # 'text_tokens' (B, S) int32 and 'text_mask' (B, S) bool
  text_length: int = 32          # S, tokens per caption with BOS and padding
  latents: str | None = None     # a folder from `dit-jax extract-latents`: read VAE latents
                                 # from it instead of images from `name`

  @classmethod
  def from_config(cls, config: Any) -> "DataConfig":
    """Reads the fields above from `config`; other fields (e.g. `channels`) are ignored."""
    if isinstance(config, cls):
      return config
    get = config.get if isinstance(config, Mapping) else (
        lambda key, default: getattr(config, key, default))
    if get("name", None) is None:
      raise InputError("data.name is required: a TFDS name such as 'digits/16', "
                       "'shapes/single_32' or 'imagenet2012'")
    return cls(**{f.name: get(f.name, f.default) for f in dataclasses.fields(cls)})

  def __post_init__(self):
    """Fails early on values the pipeline cannot use, naming the field."""
    if self.batch_size < 1:
      raise InputError(f"data.batch_size={self.batch_size}: the global batch must be >= 1")
    if self.image_size is not None and self.image_size < 1:
      raise InputError(f"data.image_size={self.image_size}: use a positive size or None")
    if not 0 <= self.seed < 2**32:
      raise InputError(f"data.seed={self.seed}: grain needs 0 <= seed < 2**32")
    if self.num_threads < 0 or self.prefetch < 0 or self.worker_count < 0:
      raise InputError("data.num_threads, data.prefetch and data.worker_count must be >= 0, got "
                       f"{self.num_threads}, {self.prefetch}, {self.worker_count}")

  def local_batch_size(self, process_count: int) -> int:
    """The per-process batch; the global batch must split evenly over processes."""
    if self.batch_size % process_count:
      lower = self.batch_size - self.batch_size % process_count
      raise InputError(
          f"data.batch_size={self.batch_size} is the global batch and must be divisible by "
          f"the number of processes ({process_count}): use a multiple of {process_count} "
          f"such as {lower or process_count} or {lower + process_count}")
    return self.batch_size // process_count
