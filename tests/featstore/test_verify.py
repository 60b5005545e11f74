"""`featstore verify` accepts an intact store and names the first problem in a damaged one."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from featstore.shardmeta import SHARD_KEY
from featstore.verify import VerifyError, verify_store


def test_an_intact_store_verifies(store_copy: Path) -> None:
    lines: list[str] = []
    assert verify_store(store_copy, echo=lines.append) == 29
    assert [line.split(":")[0] for line in lines] == ["ok  audio_0", "ok  audio_1", "ok  audio_2"]


def test_changed_audio_fails_the_checksum(store_copy: Path) -> None:
    group = zarr.open_group(str(store_copy / "shards" / "audio_1"), mode="r+")
    name, array = next(iter(group.arrays()))
    array[10] = array[10] + 1
    with pytest.raises(VerifyError, match="audio_1: checksum mismatch"):
        verify_store(store_copy)


def test_overlapping_offsets_are_found(store_copy: Path) -> None:
    offsets = zarr.open_array(str(store_copy / "shards" / "audio_2" / "offset"), mode="r+")
    offsets[-1] = offsets[-1] + 1  # now a gap before it and past the end of its array
    with pytest.raises(VerifyError, match="audio_2/b[0-9]+: utterances overlap or leave gaps"):
        verify_store(store_copy)


def test_count_mismatch_between_index_and_shard_is_found(store_copy: Path) -> None:
    shard = zarr.open_group(str(store_copy / "shards" / "audio_2"), mode="r+")
    shard.attrs[SHARD_KEY] = {**shard.attrs[SHARD_KEY], "clips": 3}
    with pytest.raises(VerifyError, match="audio_2: the index lists 12 utterances, the shard says 3"):
        verify_store(store_copy)
