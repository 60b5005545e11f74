"""What featstore's ingest adds to decoding, step by step, on one shard's clips in one process.

    python bench/ingest_steps.py [SHARD.tar.xz]   # default: shard 0 of the 5.68 h bench corpus
    python bench/ingest_steps.py --whole-shard [--rounds 3]

Decodes every clip (PyAV + soxr, as the bare decoder does), then times each step that ingest
adds, in CPU seconds: source levels, quantization, the shard checksum, and the Blosc encode of
the shard's samples in the store's chunks. Normalization is timed too (the bare decoder does it).

`--whole-shard` times instead featstore's whole shard task (`ingest_shard`: the tar reader, the
manifest records, every check, the writer, the shard's metadata) against the bare decoder's
(`bare_decode.decode_shard`) on shard 0 of the bench corpus, alternating, in one process and
without Dask: featstore's own per-shard cost, apart from the cluster's.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import tarfile

import numpy as np

from featstore.audio import decode_clip, measure_levels, normalize, quantize
from featstore.chunks import CHUNK_SAMPLES, chunk_codec
from featstore.layout import IngestSettings
from featstore.shardwriter import hash_utterance

DEFAULT = (
    "/tmp/featstore-bench/corpus_s8_c440_w6-14_seed0/train_tarred/sharded_manifests_with_image/"
    "audio_shards/audio_0.tar.xz"
)
ROW = {"bucket": 1, "offset": 0, "scale": 1e-3, "level_db": -20.0, "clipping": 0.0, "text": "umwana amazi"}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def whole_shard(rounds: int) -> None:
    import tempfile
    from pathlib import Path

    from bare_decode import decode_shard

    from featstore.ingest import ingest, ingest_shard
    from featstore.sources import discover, select_shards
    from featstore.storage import locate

    split = Path(DEFAULT).parents[2]
    corpus = discover(locate(str(split)))
    shard = select_shards(corpus, None, 1)[0]
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "one.zarr"
        ingest(split, store, max_shards=1, workers=1, echo=lambda _: None, show_progress=False)  # a store to write to
        for round_ in range(rounds):
            start = cpu()
            ingest_shard(locate(str(store)), shard, corpus.manifests, IngestSettings(), report=lambda *_: None)
            featstore_s = cpu() - start
            start = cpu()
            decode_shard(Path(DEFAULT))
            bare_s = cpu() - start
            print(
                f"round {round_}: ingest_shard {featstore_s:.2f} CPU-s, bare decode_shard {bare_s:.2f}, "
                f"ratio {featstore_s / bare_s:.3f}",
                flush=True,
            )


def main() -> None:
    if "--whole-shard" in sys.argv:
        whole_shard(int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3)
        return
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    with tarfile.open(path, "r|*") as tar:
        clips = [tar.extractfile(member).read() for member in tar if member.isfile()]  # type: ignore[union-attr]
    times = {}
    start = cpu()
    decoded = [decode_clip(clip) for clip in clips]
    times["decode + resample"] = cpu() - start
    start = cpu()
    normalized = [normalize(audio) for audio in decoded]
    times["normalize"] = cpu() - start
    start = cpu()
    for audio in decoded:
        measure_levels(audio)
    times["levels"] = cpu() - start
    start = cpu()
    quantized = [quantize(audio) for audio in normalized]
    times["quantize"] = cpu() - start
    digest = hashlib.sha256()
    start = cpu()
    for clip in quantized:
        fields = {"audio_filepath": "x.webm", "duration": clip.samples.size / 16000}
        hash_utterance(digest, clip.samples, {**ROW, "length": clip.samples.size, "fields": fields})
    times["checksum"] = cpu() - start
    samples, codec = np.concatenate([clip.samples for clip in quantized]), chunk_codec()
    start = cpu()
    for first in range(0, samples.size - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        codec.encode(samples[first : first + CHUNK_SAMPLES])
    times["blosc encode"] = cpu() - start
    audio_s = sum(audio.size for audio in decoded) / 16000
    print(f"{len(clips)} clips, {audio_s:.0f} audio-s; CPU seconds:")
    for step, seconds in times.items():
        print(f"  {step:18s} {seconds:6.3f}")


if __name__ == "__main__":
    main()
