"""Creating an empty store: built aside, then moved into place, so no half-made store is ever seen."""

from __future__ import annotations

import zarr

from featstore.chunks import SHARDS_GROUP
from featstore.index import StoreIndex
from featstore.layout import INDEX_GROUP, INDEX_KEY, ROOT_KEY, IngestSettings, root_attrs, set_attribute
from featstore.storage import Location


def create_store(store: Location, settings: IngestSettings, package_version: str) -> None:
    """Create an empty store at `store` (atomic on local disks).

    When another writer creates the same store first, its store is kept and this one dropped.
    """
    with store.built_aside() as partial:
        build_empty_store(partial, settings, package_version)
        try:
            partial.move_to(store)
        except OSError:
            if not store.exists():
                raise


def build_empty_store(where: Location, settings: IngestSettings, package_version: str) -> None:
    """Write an empty store at `where` (a name from `Location.built_aside`; the caller moves it)."""
    root = zarr.open_group(where.url, mode="w")
    root.create_group(SHARDS_GROUP)
    set_attribute(root.create_group(INDEX_GROUP), INDEX_KEY, StoreIndex().to_json())
    set_attribute(root, ROOT_KEY, root_attrs(settings, package_version))
