"""report.html: one self-contained page to explore a report in a browser (no server, no network).

The page holds the verdict of summary.md in words, the ranking table (sortable, filterable, intervals
drawn, significance marked), interactive versions of the dashboard's plots, a sample browser and the
feature table. Its numbers are the report's own objects, embedded as JSON: the detection rows are
``Report.frame()`` (what detection.csv is written from), the feature rows ``Report.features`` (what
features.csv is written from), so the page and the CSVs cannot disagree.

Size: the page must stay usable for a 100,000-sample run, so it embeds at most :data:`SAMPLES_EMBED`
samples (the seeded, domain-stratified subsample of :mod:`.sampling`, plus every sample the feature
table names) and says so; texts and SAE activations are read for those samples only. The charts are
drawn by Plotly (plotly.js from the plotly package, MIT, inlined: about 4.8 MB, the bulk of a small
run's page, kept as text and compiled after the verdict and tables are drawn); the tables are a
small hand-written script (``assets/report.js``).

Boundary: builds the page as text from a computed :class:`~saecli.report.detection.Report` and the
rows it is given; reads files only through the ``load`` / ``read_texts`` callables it is handed.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import polars as pl

from saecli.report.detection import ALL, Report, run_metrics
from saecli.report.sampling import subsample
from saecli.report.summary import auroc_words, baseline_sentence, best_sentence

SAMPLES_EMBED = 2_000
"""The most samples the page's sample browser (and its scatter plot) holds, before the ones the feature table names."""
FEATURES_PER_SAMPLE = 5
"""SAE features shown per layer for a sample: the ones whose activation differs most between its two texts."""
DATA_ID = "saecli-data"
"""The id of the page's ``<script type="application/json">`` that holds every number (tests read it)."""

Loader = Callable[..., Any]
"""``load(rows=…, keys=…)``: part of the run's residuals (:func:`saecli.report.load_residuals`), or None."""
TextReader = Callable[[Sequence[str]], dict[str, Any] | None]
"""``read_texts(ids)``: sample id → :class:`saecli.data.Sample` for those ids, or None for a run that kept no texts."""


def _clean(value: Any) -> Any:
    """A JSON-safe value: NaN and ±inf become null, numpy scalars Python ones."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _short(value: float | None) -> float | None:
    """A per-sample value to 6 significant digits (what the page shows; the ranking's rows keep every digit)."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


def _columns(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Rows as ``{"columns": names, "rows": [[…], …]}`` (half the bytes of a list of objects)."""
    return {"columns": list(names), "rows": [[_clean(r[c]) for c in names] for r in rows]}


def detection_table(report: Report) -> dict[str, Any]:
    """The detection rows as detection.csv has them: ``Report.frame()``, column for column."""
    frame = report.frame()
    return _columns(frame.to_dicts(), frame.columns)


def feature_table(report: Report) -> dict[str, Any]:
    """The feature rows as features.csv has them: the fields of every ``FeatureRow`` of the report."""
    rows = [dataclasses.asdict(f) for f in report.features]
    names = [f.name for f in dataclasses.fields(report.features[0])] if rows else []
    return _columns(rows, names)


def embedded_rows(report: Report, frame: pl.DataFrame) -> tuple[np.ndarray, str]:
    """The rows of ``frame`` the page holds (ascending) and the sentence that says which: every sample,
    or the first :data:`SAMPLES_EMBED` of the seeded stratified order plus those the feature table names."""
    domains = frame["domain"].to_list()
    picked = subsample(domains, SAMPLES_EMBED, report.seed)
    if picked is None:
        return np.arange(frame.height), f"The sample browser holds all {frame.height:,} samples."
    named = {getattr(f, f"top{k}_sample") for f in report.features for k in (1, 2, 3)} - {""}
    ids = frame["sample_id"].cast(pl.String).to_list()
    extra = [i for i, sid in enumerate(ids) if sid in named]
    rows = np.union1d(picked, np.asarray(extra, dtype=np.int64)).astype(np.int64)
    note = (
        f"The sample browser and the per-sample scatter hold {rows.size:,} of {frame.height:,} samples: a seeded subsample "
        f"of {picked.size:,} stratified by domain, plus the {len(extra):,} samples the feature table names. "
        "Every statistic (ranking, features) is on all samples."
    )
    return rows, note


def sample_features(load: Loader | None, rows: np.ndarray, layers: Sequence[int], names: set[str]) -> dict[int, list[Any]]:
    """Per layer, for each embedded row, its :data:`FEATURES_PER_SAMPLE` SAE features whose activation
    differs most between its texts, as ``[feature, fact activation, hall activation]``; only the
    layers whose features the residuals hold, read for ``rows`` alone."""
    out: dict[int, list[Any]] = {}
    if load is None or rows.size == 0:
        return out
    for layer in layers:
        keys = [f"features.l{layer}_fact", f"features.l{layer}_hall"]
        if not all(k in names for k in keys):
            continue
        part = load(rows=rows, keys=keys)
        if part is None:
            continue
        fact = part.features[f"l{layer}_fact"].tocsr()
        hall = part.features[f"l{layer}_hall"].tocsr()
        out[layer] = [_top_differences(fact, hall, i) for i in range(fact.shape[0])]
    return out


def _row(m: Any, i: int) -> dict[int, float]:
    """Row ``i`` of a CSR matrix as feature → activation, its non-zeros alone."""
    start, end = m.indptr[i], m.indptr[i + 1]
    return dict(zip(m.indices[start:end].tolist(), m.data[start:end].tolist(), strict=True))


def _top_differences(fact: Any, hall: Any, i: int) -> list[list[Any]]:
    """Row ``i``'s :data:`FEATURES_PER_SAMPLE` features of largest |hall − fact| (ties: lower index
    first) as ``[feature, fact, hall]`` (CSR matrices: only the row's non-zeros are looked at)."""
    f, h = _row(fact, i), _row(hall, i)
    moved = [j for j in f.keys() | h.keys() if f.get(j, 0.0) != h.get(j, 0.0)]
    moved.sort(key=lambda j: (-abs(h.get(j, 0.0) - f.get(j, 0.0)), j))
    return [[int(j), round(f.get(j, 0.0), 4), round(h.get(j, 0.0), 4)] for j in moved[:FEATURES_PER_SAMPLE]]


def sample_table(
    report: Report, frame: pl.DataFrame, rows: np.ndarray, texts: dict[str, Any] | None, features: dict[int, list[Any]]
) -> dict[str, Any]:  # fmt: skip
    """The embedded samples: id, domain, texts (when the run kept them), every metric's fact and hall
    value (``metrics`` names them, in the ranking's naming) and the top features per layer."""
    metrics = run_metrics(frame, report.layers)
    part = frame[rows.tolist()]
    ids = part["sample_id"].cast(pl.String).to_list()
    values = {}
    for m in metrics:
        for column in (m.fact, m.hall):
            values[column] = [_short(v) for v in part[column].cast(pl.Float64).to_list()]
    samples = []
    for i, sid in enumerate(ids):
        text = texts.get(sid) if texts else None
        samples.append({
            "id": sid,
            "domain": part["domain"][i],
            "prompt": text.prompt if text else None,
            "fact": text.fact if text else None,
            "hall": text.hallucination if text else None,
            "f": [values[m.fact][i] for m in metrics],
            "h": [values[m.hall][i] for m in metrics],
            "features": {str(layer): per_row[i] for layer, per_row in features.items()},
        })  # fmt: skip
    return {"metrics": [m.name for m in metrics], "samples": samples}


def _inline_markdown(text: str) -> str:
    """The few markdown marks summary.md's sentences use (```code```, ``**bold**``) as HTML, the rest escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def verdict(report: Report) -> tuple[list[str], list[str]]:
    """The verdict of summary.md, sentence for sentence (its own functions: one verdict, not two), as
    HTML: the lines on all samples, and the best metric of each domain."""
    lines = []
    (best,) = report.top(1) or [None]
    if best is not None:
        lines.append(
            f"Best separating, all samples: `{best.metric}`, AUROC {best.auroc:.3f}: {auroc_words(best.auroc)}; "
            f"{best_sentence(report)}."
        )
    lines.append(baseline_sentence(report))
    domains = []
    for domain in report.domains:
        (b,) = report.top(1, domain) or [None]
        if b is not None:
            domains.append(
                f"**{domain}**: `{b.metric}`, AUROC {b.auroc:.3f}: {auroc_words(b.auroc)}; {best_sentence(report, domain)}."
            )
    return [_inline_markdown(line) for line in lines], [_inline_markdown(line) for line in domains]


def neuronpedia_bases(report: Report) -> dict[str, str]:
    """Layer → the Neuronpedia address of its SAE (the feature links without the feature), from the feature rows' links."""
    return {str(f.layer): f.url.rsplit("/", 1)[0] for f in report.features if f.url}


def page_data(
    report: Report, frame: pl.DataFrame, *, load: Loader | None = None, names: Sequence[str] = (),
    read_texts: TextReader | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything the page shows, as one JSON-able document."""
    rows, sampled = embedded_rows(report, frame)
    ids = frame["sample_id"].cast(pl.String).to_list()
    texts = read_texts([ids[i] for i in rows.tolist()]) if read_texts is not None else None
    features = sample_features(load, rows, report.layers, set(names))
    overall, per_domain = verdict(report)
    notes = [sampled]
    if texts is None:
        notes.append("The run kept no texts (samples.parquet): the sample browser shows ids and numbers only.")
    if load is None:
        notes.append("The run has no residuals.safetensors: no SAE features per sample.")
    return {
        "preset": report.preset,
        "samples": report.samples,
        "layers": report.layers,
        "domains": report.domains,
        "all": ALL,
        "data_source": report.data_source,
        "run_dir": str(report.run_dir),
        "bootstrap": report.bootstrap,
        "trained_on_benchmark": report.trained_on_benchmark,
        "tested": report.tested,
        "verdict": overall,
        "verdict_domains": per_domain,
        "notes": [_inline_markdown(n) for n in report.notes],
        "page_notes": notes,
        "detection": detection_table(report),
        "features": feature_table(report),
        "neuronpedia": neuronpedia_bases(report),
        "sample_table": sample_table(report, frame, rows, texts, features),
    }


def _asset(name: str) -> str:
    return resources.files("saecli.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(data: dict[str, Any]) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can appear)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def plotly_js() -> str:
    """plotly.js (minified) from the installed plotly package, to inline in the page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def html_page(data: dict[str, Any], *, charts_js: str | None = None) -> str:
    """The page: the template with its stylesheet, plotly.js, the data and the page's script inlined."""
    title = html.escape(f"saecli report: {data['preset']}, {data['samples']:,} samples")
    charts = (charts_js if charts_js is not None else plotly_js()).replace("</script", "<\\/script")
    parts = {"TITLE": title, "CSS": _asset("report.css"), "PLOTLY": charts, "DATA_ID": DATA_ID, "DATA": _script_json(data),
             "SCRIPT": _asset("report.js")}  # fmt: skip
    # one pass over the template: what is put in (plotly.js, the data) is never searched for placeholders
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("report.html"))


def read_page_data(page: str) -> dict[str, Any]:
    """The JSON document a page embeds (for tests and tools that check a page against the CSVs)."""
    match = re.search(rf'<script type="application/json" id="{DATA_ID}">(.*?)</script>', page, re.S)
    if match is None:
        raise ValueError("not a saecli report.html: no embedded data")
    return json.loads(match.group(1))
