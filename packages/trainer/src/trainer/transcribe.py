"""Transcribe every utterance of a store into a CSV: audio_filepath, manifest metadata, prediction.

Works on stores without text (test splits): the text column is then empty.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from trainer.claims import claim_table
from trainer.data import StoreDataset, make_loader
from trainer.inference import pick_device, transcribe_batches
from trainer.run import load_trained, write_atomic
from trainer.stores import open_checked

FIRST_COLUMN = "audio_filepath"
LAST_COLUMN = "prediction"


def is_transcript_header(header: list[str]) -> bool:
    return len(header) >= 2 and header[0] == FIRST_COLUMN and header[-1] == LAST_COLUMN


def transcribe_store(run_path: Path, store_path: Path, out: Path, device_name: str = "auto", workers: int = 0) -> int:
    """Write the CSV atomically in store order; return the number of rows.

    `out` may replace only an earlier transcript table, and never lies in the store.
    """
    claim_table(out, is_transcript_header, "transcript table", "transcripts.csv", store_path)
    store = open_checked(store_path)
    device = pick_device(device_name)
    model, processor, config = load_trained(run_path, device)
    dataset = StoreDataset(store_path, processor, config.text)
    loader = make_loader(dataset, config.batch.sampler(store, shuffle=False), workers)
    predictions = {t.index: t.prediction for t in transcribe_batches(model, loader, processor, device)}
    records = [store.record(i) for i in range(len(store))]
    columns = [FIRST_COLUMN]
    for record in records:  # union of fields, in first-seen order: manifests may differ by shard
        columns.extend(key for key in record if key not in columns and key != LAST_COLUMN)
    columns.append(LAST_COLUMN)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for i, record in enumerate(records):
        writer.writerow({**record, LAST_COLUMN: predictions[i]})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, buffer.getvalue().encode("utf-8"))
    return len(records)
