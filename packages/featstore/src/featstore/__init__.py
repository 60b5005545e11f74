"""featstore: tarred speech shards in, a chunked Zarr store of normalized 16 kHz audio out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featstore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from featstore.errors import FeatstoreError
from featstore.reader import FeatStore, Utterance, open_store

__all__ = ["FeatStore", "FeatstoreError", "Utterance", "__version__", "open_store"]
