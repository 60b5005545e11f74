"""featstore: tarred speech shards in, a chunked Zarr store of normalized 16 kHz audio out."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("featstore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from featstore.reader import FeatStore, Utterance, open_store

__all__ = ["FeatStore", "FeatstoreError", "Utterance", "__version__", "open_store"]
_READER_NAMES = {"FeatStore", "Utterance", "open_store"}


def __getattr__(name: str) -> Any:
    """The reader (numpy, zarr) loads on first use, so `featstore` starts fast and the CLI can catch
    a Ctrl-C that lands while those libraries load."""
    if name in _READER_NAMES:
        from featstore import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'featstore' has no attribute {name!r}")
