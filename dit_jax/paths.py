"""Paths a user gives (a workdir, an output file, a data folder) may be local or in a bucket
(`gs://BUCKET/...`): `as_path` makes either an `etils.epath.Path`, what Orbax, TFDS and grain
take. (`pathlib.Path("gs://b/run")` is the local folder `gs:/b/run`, silently.)

Buckets need the `[gcs]` extra (gcsfs, google-cloud-storage); epath then reaches gs://
through gcsfs, never TensorFlow. Credentials come from the environment (application default
credentials, GOOGLE_APPLICATION_CREDENTIALS); nothing here reads or stores a key.

An object store is not a file system: an object appears whole when its upload finishes, but
there is no append, no rename and no exclusive create. `dit_jax.state_files` builds the
guarantees of the run's files on what it does have (uploads and generation preconditions).
"""
import contextlib
import importlib.util
import logging
import os
import shutil

# epath's backend for gs:// is chosen when a path is first used: gcsfs, not TensorFlow's gfile
# (TensorFlow is here only to prepare data sets, and its GCS client ignores the emulator).
os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402  (after the switch above)

from dit_jax.errors import (InputError, MissingFileError, MissingPackageError,  # noqa: E402
                            StorageError)

# gcsfs logs each request that failed for good with its traceback; the library raises that
# failure once, naming the path and the fix (remote_errors), so the records with one go.
logging.getLogger("gcsfs").addFilter(lambda record: not record.exc_info)

SCHEME = "gs://"
INSTALL_GCS = "pip install 'dit-jax[gcs]'"
CREDENTIALS_FIX = ("give this machine credentials for the bucket: `gcloud auth "
                   "application-default login`, a service account of the VM, or "
                   "GOOGLE_APPLICATION_CREDENTIALS=key.json")


# Buckets that did not answer a request through all its retries (gcsfs: 6 tries, ~35 s;
# Orbax's tensorstore: see engine.checkpoint). What is left to do after such a failure (the
# last uploads, releasing the lock) skips them rather than wait through the retries again.
_unreachable: set[str] = set()


def is_remote(path) -> bool:
  """Whether `path` (a string or a path) names an object in a bucket."""
  return os.fspath(path).startswith(SCHEME)


def as_path(path) -> epath.Path:
  """`path` as an epath.Path, local or gs://. A gs:// path without the [gcs] extra is a
  MissingPackageError; `gs:/b` (a bucket path that lost a slash, e.g. through pathlib) is an
  InputError rather than a local folder named `gs:`."""
  text = os.fspath(path)
  if is_remote(text):
    require_gcs(text)
  elif text.startswith("gs:/"):
    raise InputError(f"{text} looks like a bucket path that lost a slash (pathlib.Path turns "
                     f"gs://b into gs:/b): write {SCHEME}{text[4:]}")
  return epath.Path(text)


def require_gcs(path) -> None:
  """Raises MissingPackageError naming the extra when gcsfs is not installed."""
  if importlib.util.find_spec("gcsfs") is None:
    raise MissingPackageError(f"{path} is in a bucket, which needs the GCS extra (gcsfs, "
                              f"google-cloud-storage): {INSTALL_GCS}")


def filesystem(path):
  """The gcsfs file system that epath uses for gs:// paths (one per process), for what epath
  does not offer: create-if-absent, an object's generation."""
  require_gcs(path)
  import fsspec  # deferred: installed with the optional [gcs] extra only
  return fsspec.filesystem("gcs", finalize_on_close=True)  # epath's own instance (cached)


def object_name(path) -> str:
  """`BUCKET/key` of a gs:// path, as gcsfs names objects."""
  return os.fspath(path)[len(SCHEME):]


def bucket(path) -> str:
  """The bucket's name of a gs:// path."""
  return object_name(path).split("/")[0]


def mark_unreachable(path) -> None:
  if is_remote(path):
    _unreachable.add(bucket(path))


def unreachable(path) -> bool:
  """Whether a request to the bucket of `path` failed for good in this process."""
  return is_remote(path) and bucket(path) in _unreachable


def check_bucket(path) -> None:
  """For a gs:// `path`: raises MissingFileError when its bucket does not exist, InputError
  when the credentials are refused (both naming `path` and the fix). Run before writing: the
  object store would otherwise say so at the first save, or (gcsfs's mkdir) make a bucket."""
  if not is_remote(path):
    return
  with remote_errors(path):
    fs = filesystem(path)
    fs.invalidate_cache(bucket(path))
    fs.info(bucket(path))  # FileNotFoundError (no such bucket), an auth error, or unreachable


def make_dirs(path) -> None:
  """Creates a local folder and its parents; a bucket has no folders (a prefix exists once an
  object is under it), so there only the bucket is checked."""
  if is_remote(path):
    check_bucket(path)
  else:
    as_path(path).mkdir(parents=True, exist_ok=True)


def list_names(folder) -> list[str]:
  """The names in `folder`, [] when it is missing, listed afresh: gcsfs keeps listings for the
  life of the process and would not see what another process (a training run) wrote since."""
  folder = as_path(folder)
  with remote_errors(folder):
    if is_remote(folder):
      filesystem(folder).invalidate_cache(object_name(folder))
    try:
      return [p.name for p in folder.iterdir()]
    except FileNotFoundError:
      return []


def move_tree(source, target) -> None:
  """Moves the folder `source` to `target` (missing parents created). Locally one rename. A
  bucket has no rename: every object is copied first (server side), and only when all are
  copied is `source` deleted, so a failure half-way loses nothing (a part of `source` may
  stay behind, with the whole copy at `target`)."""
  if not is_remote(source):
    as_path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    return
  fs = filesystem(source)
  with remote_errors(source):
    fs.invalidate_cache(object_name(source))
    fs.copy(object_name(source), object_name(target), recursive=True)
    fs.rm(object_name(source), recursive=True)
    fs.invalidate_cache(object_name(source))


@contextlib.contextmanager
def remote_errors(path):
  """Turns what a bucket answers when it cannot be used (no such bucket, no credentials, no
  permission, unreachable) into one error naming `path` and the fix, without a traceback."""
  try:
    yield
  except (InputError, MissingFileError, MissingPackageError, StorageError):
    raise
  except Exception as error:
    if not is_remote(path):
      raise
    raise remote_error(path, error) from error


def remote_error(path, error: BaseException) -> Exception:
  """The library error for a failed request on gs:// `path` (see remote_errors)."""
  text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
  code = getattr(error, "code", None)
  if isinstance(error, FileNotFoundError) or code == 404:
    return MissingFileError(f"{path}: the bucket gs://{bucket(path)} or the object does not "
                            f"exist ({text}): create the bucket, or fix the path")
  if code in (401, 403) or "credential" in text.lower() or "auth" in type(error).__module__:
    return InputError(f"{path}: the bucket refused access ({text}): {CREDENTIALS_FIX}")
  mark_unreachable(path)
  return StorageError(f"{path}: the bucket could not be reached ({text}): check the network "
                      "and the bucket, then rerun the same command")



def absolute(path) -> str:
  """`path` as a file records it for later readers: a gs:// path as it is, a local one made
  absolute (epath's absolute() would turn gs://b/x into a local ./gs:/b/x)."""
  return os.fspath(path) if is_remote(path) else os.fspath(as_path(path).absolute())


def open_read(path, block_size: int | None = None):
  """`path` opened for reading in binary (seekable: ranged reads in a bucket, each fetching
  `block_size` bytes ahead, gcsfs's default if None); not reaching it raises remote_errors'
  errors. Errors of what is read stay the reader's (a damaged file is not a lost network)."""
  with remote_errors(path):
    if is_remote(path) and block_size:
      return filesystem(path).open(object_name(path), "rb", block_size=block_size)
    return as_path(path).open("rb")


def upload_tree(local, target) -> None:
  """Copies what the local folder `local` holds to the folder `target` (gs://, or local), one
  upload per file (each published whole); files already there of other names stay."""
  if not is_remote(target):
    shutil.copytree(local, target, dirs_exist_ok=True)
    return
  with remote_errors(target):  # "local/": its content, not a folder named after it
    filesystem(target).put(os.fspath(local).rstrip("/") + "/", object_name(target),
                           recursive=True)
