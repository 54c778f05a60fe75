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
