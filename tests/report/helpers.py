"""A synthetic run folder and the checks the report tests share."""

from __future__ import annotations

import math

import numpy as np
from typer.testing import CliRunner

from saecli.columns import metric_columns
from saecli.io import rows_to_frame, write_manifest, write_metrics

runner = CliRunner()
LAYERS = [0, 2, 3]
DOMAINS = {"entity": 6, "logical": 5, "temporal": 4}


def synthetic_run(path, *, layers=LAYERS):
    """15 samples of random metrics; l2_reconstruction_error separates perfectly (hall = fact + 1)."""
    rng = np.random.default_rng(0)
    domains = [d for d, n in DOMAINS.items() for _ in range(n)]
    rows = []
    for i, domain in enumerate(domains):
        row = {"sample_id": f"s{i}", "domain": domain, "topic": None, "complexity": 1}
        for column in metric_columns(layers):
            if column.endswith("_l0_norm"):
                row[column] = int(rng.integers(5, 40))
            elif column.endswith("_shape_class"):
                row[column] = ["Spherical", "Oblate", "Prolate", "Triaxial", None][int(rng.integers(0, 5))]
            elif column.startswith("logprob_"):
                row[column] = None  # a run with --no-baselines
            else:
                row[column] = float(rng.random())
        row[f"l{layers[1]}_hall_reconstruction_error"] = row[f"l{layers[1]}_fact_reconstruction_error"] + 1.0
        row["entropy_hall"] = row["entropy_fact"] - 0.5  # always lower for hallucinations
        rows.append(row)
    rows[0]["stability_hall"] = math.nan  # a missing value leaves that sample out of that metric only
    write_metrics(rows_to_frame(rows, layers), path)
    write_manifest({"schema_version": 1, "preset": {"name": "synthetic"}, "layers": layers, "samples": len(rows),
                    "data_source": "test", "status": "complete"}, path)  # fmt: skip
    return path


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- runs with baselines and residuals ---------------------------------------------------------------

PLANTED_FEATURE = 7
DENSE_FEATURE = 3


def planted_residuals(n, *, layers=LAYERS, domains=("entity", "logical", "temporal"), d_model=16, d_sae=96, shift=1.5,
                      swap=False, per_domain_direction=False, seed=0):  # fmt: skip
    """Synthetic residuals of ``n`` samples (domains in turn) with the label carried by

    * the dense vectors: hall = noise + shift·u, fact = noise − shift·u (u one unit direction, or one per
      domain with ``per_domain_direction``), every other direction pure noise;
    * SAE feature ``PLANTED_FEATURE``: fires on 80% of hallucinations (0.5-1.5) and 10% of facts;
    * SAE feature ``DENSE_FEATURE``: fires on every text with a per-sample level U(1, 5), hall = fact + 0.3
      ± 0.03: a large, regular paired shift (|d_z| ≈ 10) on a generic feature, useless per text;
    * the rest: sparse noise (5% density), the same distribution for both texts.

    ``swap``: each sample's two texts swapped with probability ½ (the labels shuffled: no signal).
    Returns (Residuals, sample domains).
    """
    import scipy.sparse as sp

    from saecli.residuals import Residuals

    rng = np.random.default_rng(seed)
    sample_domains = [domains[i % len(domains)] for i in range(n)]
    directions = {d: np.eye(d_model)[k % d_model] for k, d in enumerate(domains)} if per_domain_direction else None
    u = np.ones(d_model) / np.sqrt(d_model)
    dense, features = {}, {}
    for layer in layers:
        unit = np.stack([directions[d] if directions else u for d in sample_domains])
        fact = rng.normal(size=(n, d_model)) - shift * unit
        hall = rng.normal(size=(n, d_model)) + shift * unit
        f_feat = sp.random(n, d_sae, density=0.05, random_state=rng, format="lil", dtype=np.float64)
        h_feat = sp.random(n, d_sae, density=0.05, random_state=rng, format="lil", dtype=np.float64)
        for m in (f_feat, h_feat):
            m[:, PLANTED_FEATURE] = 0.0
        level = rng.uniform(1, 5, size=n)
        f_feat[:, DENSE_FEATURE] = level[:, None]
        h_feat[:, DENSE_FEATURE] = (level + 0.3 + rng.normal(0, 0.03, size=n))[:, None]
        fires_h, fires_f = rng.random(n) < 0.8, rng.random(n) < 0.1
        h_feat[np.flatnonzero(fires_h), PLANTED_FEATURE] = rng.uniform(0.5, 1.5, size=int(fires_h.sum()))[:, None]
        f_feat[np.flatnonzero(fires_f), PLANTED_FEATURE] = rng.uniform(0.5, 1.5, size=int(fires_f.sum()))[:, None]
        f_feat, h_feat = f_feat.tocsr(), h_feat.tocsr()
        if swap:
            flip = rng.random(n) < 0.5
            fact, hall = np.where(flip[:, None], hall, fact), np.where(flip[:, None], fact, hall)
            keep = sp.diags((~flip).astype(float))
            flipm = sp.diags(flip.astype(float))
            f_feat, h_feat = (keep @ f_feat + flipm @ h_feat).tocsr(), (keep @ h_feat + flipm @ f_feat).tocsr()
        dense[f"l{layer}_fact"], dense[f"l{layer}_hall"] = fact.astype(np.float32), hall.astype(np.float32)
        features[f"l{layer}_fact"] = f_feat.astype(np.float32)
        features[f"l{layer}_hall"] = h_feat.astype(np.float32)
    ids = [f"s{i}" for i in range(n)]
    residuals = Residuals(
        layers=list(layers), sample_ids=ids, dense=dense, features=features, d_sae={layer: d_sae for layer in layers}
    )
    return residuals, sample_domains


def baseline_run(path, *, n=60, layers=LAYERS, logprob_shift=0.0, residuals=True, neuronpedia=None, swap=False, seed=0):
    """A complete run of ``n`` samples in three domains with the six log-prob columns and (optionally)
    planted residuals. ``logprob_shift``: how much higher log p(fact) is than log p(hall) on average
    (noise SD 1). l{layers[1]}_reconstruction_error separates perfectly, as in :func:`synthetic_run`.
    ``neuronpedia``: layer → id for the manifest's SAEs."""
    from saecli.residuals import write_residuals

    rng = np.random.default_rng(seed + 1)
    res, sample_domains = planted_residuals(n, layers=layers, swap=swap, seed=seed)
    rows = []
    for i, domain in enumerate(sample_domains):
        row = {"sample_id": f"s{i}", "domain": domain, "topic": None, "complexity": 1}
        for column in metric_columns(layers):
            if column.endswith("_l0_norm"):
                row[column] = int(rng.integers(5, 40))
            elif column.endswith("_shape_class"):
                row[column] = None
            else:
                row[column] = float(rng.random())
        row[f"l{layers[1]}_hall_reconstruction_error"] = row[f"l{layers[1]}_fact_reconstruction_error"] + 1.0
        tokens = int(rng.integers(1, 5))
        lp_fact = -float(rng.gamma(2.0, 2.0)) + logprob_shift / 2 + rng.normal()
        lp_hall = lp_fact - logprob_shift + rng.normal()
        row |= {"logprob_sum_fact": lp_fact, "logprob_sum_hall": lp_hall, "logprob_sum_diff": lp_fact - lp_hall,
                "logprob_mean_fact": lp_fact / tokens, "logprob_mean_hall": lp_hall / tokens,
                "logprob_mean_diff": (lp_fact - lp_hall) / tokens}  # fmt: skip
        if swap and rng.random() < 0.5:  # the labels shuffled: this sample's two texts trade places
            for column in [c for c in row if "_fact" in c]:
                other = column.replace("_fact", "_hall")
                row[column], row[other] = row[other], row[column]
        rows.append(row)
    import polars as pl

    frame = rows_to_frame([{k: v for k, v in r.items() if not k.startswith("logprob")} for r in rows], layers)
    frame = frame.with_columns([pl.Series(c, [r[c] for r in rows], dtype=pl.Float64) for c in rows[0] if c.startswith("logprob")])
    write_metrics(frame, path)
    saes = {str(layer): {"identity": f"sae-{layer}", "neuronpedia_id": (neuronpedia or {}).get(layer)} for layer in layers}
    write_manifest({"schema_version": 1, "preset": {"name": "synthetic"}, "layers": layers, "samples": len(rows),
                    "data_source": "test", "status": "complete", "baselines": True, "saes": saes}, path)  # fmt: skip
    if residuals:
        # the file's rows in another order than the table's: the report must match them by id
        write_residuals(path / "residuals.safetensors", res.select(list(reversed(res.sample_ids))))
    return path
