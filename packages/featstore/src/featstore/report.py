"""The inspection as pictures: PNG plots, and one self-contained HTML page that embeds them."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from featstore.inspection import Inspection, inspection_summary  # noqa: E402
from featstore.storage import finite, locate  # noqa: E402

PLOTS = ("durations", "shards", "speaking_rate", "levels")
_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:90em} table{border-collapse:collapse} "
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left} "
    "figure{display:inline-block;width:48%;margin:0.5%} figure img{width:100%}"
)


def render_plots(inspection: Inspection) -> dict[str, bytes]:
    """Each plot in PLOTS as PNG bytes."""
    return {name: _png(_FIGURES[name], inspection) for name in PLOTS}


def write_plots(inspection: Inspection, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in render_plots(inspection).items():
        path = folder / f"{name}.png"
        locate(path).write_atomic(data)
        paths.append(path)
    return paths


def write_html(inspection: Inspection, path: Path) -> Path:
    """A page that opens in any browser with no server: plots inlined as data URIs."""
    summary = inspection_summary(inspection)
    images = "\n".join(
        f'<figure><img id="plot-{name}" alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        "</figure>"
        for name, data in render_plots(inspection).items()
    )
    shards = [[name, shard["utterances"], f"{shard['hours']:.3f}"] for name, shard in summary["shards"].items()]
    outliers = [
        [o["audio_filepath"], o["text"], o["seconds"], o["chars_per_second"], o["z"]]
        for o in summary["speaking_rate_outliers"]
    ]
    quiet_rows = [[q["audio_filepath"], q["text"], q["seconds"], q["level_db"]] for q in summary["quiet_utterances"]]
    quiet = _table(["audio_filepath", "text", "seconds", "level dBFS"], quiet_rows) or "none"
    characters = [[repr(c) if c.isspace() else c, n] for c, n in summary["characters"].items()]
    rejects = [[reason, count] for reason, count in summary["rejects"].items()]
    summary_json = json.dumps(finite(summary), ensure_ascii=False, allow_nan=False)
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>featstore inspect: {html.escape(summary["store"])}</title>
<style>{_STYLE}</style></head>
<body><h1>{html.escape(summary["store"])}</h1>
<p>{summary["utterances"]} utterances, {summary["hours"]:.3f} hours, {len(summary["shards"])} shards.</p>
<h2>Plots</h2><p id="plot-status">plots not rendered (is JavaScript off?)</p>{images}
<h2>Shards</h2>{_table(["shard", "utterances", "hours"], shards)}
<h2>Measurements</h2>{_table(["measure", "min", "p5", "median", "p95", "max"], _measure_rows(summary))}
<h2>Speaking-rate outliers</h2>{_table(["audio_filepath", "text", "seconds", "chars/s", "z"], outliers) or "none"}
<h2>Near-silent utterances (below {summary["quiet_db"]:g} dBFS)</h2>{quiet}
<h2 id="characters">Characters</h2>{_table(["character", "count"], characters)}
<h2>Rejects</h2>{_table(["reason", "count"], rejects) or "none"}
<script>window.addEventListener("load", () => {{
  const images = [...document.querySelectorAll("figure img")];
  const shown = images.filter((image) => image.complete && image.naturalWidth > 0).length;
  document.getElementById("plot-status").textContent = `${{shown}} of ${{images.length}} plots rendered`;
}});</script>
<script type="application/json" id="summary">{html.escape(summary_json)}</script>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    locate(path).write_atomic(body.encode())
    return path


def _measure_rows(summary: dict[str, Any]) -> list[list[Any]]:
    names = [
        "duration_seconds",
        "level_db",
        "clipping_rate",
        "peak",
        "lead_silence_seconds",
        "trail_silence_seconds",
        "speaking_rate",
    ]
    return [
        [name] + [f"{summary[name].get(k, 0):.3g}" for k in ("min", "p5", "median", "p95", "max")]
        for name in names
        if summary[name]
    ]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(draw: Any, inspection: Inspection) -> bytes:
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    draw(axes, inspection)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _durations(axes: Any, inspection: Inspection) -> None:
    axes.hist(inspection.store.durations, bins=40, color="#4477aa")
    axes.set(title="Utterance durations", xlabel="seconds", ylabel="utterances")


def _shards(axes: Any, inspection: Inspection) -> None:
    shards = inspection.per_shard()
    axes.bar(list(shards), [s["hours"] for s in shards.values()], color="#228833")
    axes.set(title="Audio per shard", ylabel="hours")
    axes.tick_params(axis="x", rotation=90)


def _speaking_rate(axes: Any, inspection: Inspection) -> None:
    durations, rate = inspection.store.durations, inspection.speaking_rate
    axes.scatter(durations, rate, s=6, color="#4477aa", label="utterance")
    flagged = [o["index"] for o in inspection.outliers]
    if flagged:
        axes.scatter(durations[flagged], rate[flagged], s=30, color="#ee6677", label="outlier")
    axes.set(title="Speaking rate", xlabel="seconds", ylabel="characters per second")
    axes.legend(loc="upper right")


def _levels(axes: Any, inspection: Inspection) -> None:
    levels = inspection.store.levels_db
    axes.hist(levels[np.isfinite(levels)], bins=40, color="#aa3377")
    axes.set(title="Level before normalization", xlabel="RMS dBFS", ylabel="utterances")


_FIGURES = {"durations": _durations, "shards": _shards, "speaking_rate": _speaking_rate, "levels": _levels}
