"""The files saecli reads back are untrusted input: parts, residual parts, merged files and the
manifest are bound to the run that wrote them and checked before anything is built on them.

Every case ends in one of two ways: one line and the documented exit code (nothing finished lost),
or a redo whose results equal an uninterrupted run's."""

from __future__ import annotations

import json
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from saecli import io
from saecli import runner as run_module
from saecli.cli import app
from saecli.compare import compare_frames
from saecli.errors import SaecliError
from saecli.report import load_residuals, load_texts
from saecli.residuals import read_residuals

pytestmark = pytest.mark.slow
cli = CliRunner()
SMALL = ["--limit", "8", "--batch-size", "2", "--dtype", "float64"]


class _Stop(KeyboardInterrupt):
    pass


def _invoke(*args: str):
    return cli.invoke(app, list(args))


def _interrupted(out: Path, *extra: str) -> Path:
    """A run stopped just before its merge: every part written, the manifest still ``running``."""

    def stop(name: str) -> None:
        if name == "before_merge":
            raise _Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "crash_point", stop)
        result = _invoke("run", *SMALL, *extra, "--out", str(out))
    assert result.exit_code == 130, result.output
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("untrusted")
    reference = root / "reference"
    assert _invoke("run", *SMALL, "--out", str(reference)).exit_code == 0
    other = root / "other"
    assert _invoke("run", *SMALL, "--seed", "1", "--out", str(other)).exit_code == 0
    return {
        "reference": reference,
        "other": other,
        "unfinished": _interrupted(root / "unfinished"),
        "other_seed": _interrupted(root / "other_seed", "--seed", "1"),
    }


def _copy(source: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def _one_line(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output and "bug in saecli" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split()), result.stderr


def _same_as(reference: Path, out: Path) -> None:
    assert compare_frames(
        io.read_parquet(reference / "metrics.parquet"), io.read_parquet(out / "metrics.parquet"), atol=1e-9
    ).passed
    ours, theirs = read_residuals(out / io.RESIDUALS_FILE), read_residuals(reference / io.RESIDUALS_FILE)
    assert ours.sample_ids == theirs.sample_ids and set(ours.dense) == set(theirs.dense)
    for key in ours.dense:
        np.testing.assert_allclose(ours.dense[key], theirs.dense[key], atol=1e-9)
        assert abs(ours.features[key] - theirs.features[key]).max() < 1e-9


def _parts(folder: Path) -> list[Path]:
    return sorted((folder / "parts").glob("part-*.parquet"))


def _residual_parts(folder: Path) -> list[Path]:
    return sorted((folder / "parts").glob("part-*.residuals.safetensors"))


def test_a_part_of_another_run_is_refused_and_nothing_is_lost(folders, tmp_path):
    out = _copy(folders["unfinished"], tmp_path)
    foreign = _parts(folders["other_seed"])[1]
    _parts(out)[1].unlink()
    shutil.copy(foreign, out / "parts" / foreign.name)
    before = sorted(p.name for p in (out / "parts").iterdir())
    _one_line(_invoke("run", "--resume", str(out)), 2, foreign.name, "seed 1", "this run has 0", "move it out of")
    assert sorted(p.name for p in (out / "parts").iterdir()) == before
    (out / "parts" / foreign.name).unlink()
    assert _invoke("run", "--resume", str(out)).exit_code == 0
    _same_as(folders["reference"], out)


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign"])
def test_a_broken_residuals_part_is_redone_before_the_work_starts(folders, tmp_path, damage):
    out = _copy(folders["unfinished"], tmp_path)
    target = _residual_parts(out)[2]
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    else:
        shutil.copy(
            _residual_parts(folders["other_seed"])[0], target
        )  # other samples: the seed alone leaves residuals as they are
    result = _invoke("run", "--resume", str(out))
    assert result.exit_code == 0, result.output
    assert "its residuals" in " ".join(result.stderr.split())
    _same_as(folders["reference"], out)


@pytest.mark.parametrize("offset", [0.02, 0.5, 0.97])
def test_a_bit_flip_in_a_part_is_redone(folders, tmp_path, offset):
    out = _copy(folders["unfinished"], tmp_path)
    part = _parts(out)[0]
    data = bytearray(part.read_bytes())
    data[int(len(data) * offset)] ^= 0x10
    part.write_bytes(bytes(data))
    result = _invoke("run", "--resume", str(out))
    assert result.exit_code == 0, result.output
    assert "is broken" in result.stderr
    _same_as(folders["reference"], out)


@pytest.mark.parametrize("entry", ["part-000009-0123456789abcdef.parquet/", "part-00001x.parquet", "part-000001.parquet"])
def test_odd_entries_in_the_parts_folder_are_refused(folders, tmp_path, entry):
    out = _copy(folders["unfinished"], tmp_path)
    path = out / "parts" / entry.rstrip("/")
    path.mkdir() if entry.endswith("/") else path.write_bytes(b"x")
    _one_line(_invoke("run", "--resume", str(out)), 2, path.name, "not a part file")
    assert path.exists()


def test_resume_of_a_complete_run_with_another_seed_is_refused(folders, tmp_path):
    out = _copy(folders["reference"], tmp_path)
    _one_line(_invoke("run", "--resume", str(out), "--seed", "5"), 2, "seed was 0 and is now 5")
    assert _invoke("run", "--resume", str(out)).exit_code == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("backoffs", 5), ("config", []), ("layers", ["a"]), ("status", None), ("timings", {"load_seconds": "x"})],
)
def test_a_manifest_with_fields_of_the_wrong_type_is_refused(folders, tmp_path, field, value):
    for source in ("unfinished", "reference"):
        out = _copy(folders[source], tmp_path, source)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest[field] = value
        (out / "manifest.json").write_text(json.dumps(manifest))
        _one_line(_invoke("run", "--resume", str(out)), 2, "not a valid saecli manifest", field)


def test_a_config_of_the_wrong_type_is_refused(folders, tmp_path):
    out = _copy(folders["unfinished"], tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["batch_size"] = [2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    _one_line(_invoke("run", "--resume", str(out)), 2, "manifest.json: config")


def test_merged_files_are_bound_to_their_run(folders, tmp_path):
    out = _copy(folders["reference"], tmp_path)
    other = folders["other"]
    shutil.copy(other / io.RESIDUALS_FILE, out / io.RESIDUALS_FILE)
    _one_line(_invoke("report", "--bootstrap", "0", str(out)), 2, "residuals.safetensors is not the file this run wrote")
    shutil.copy(other / io.METRICS_FILE, out / io.METRICS_FILE)
    _one_line(_invoke("compare", str(folders["reference"]), str(out)), 2, "metrics.parquet is not the file this run wrote")


def test_a_corrupted_metrics_file_is_one_line(folders, tmp_path):
    out = _copy(folders["reference"], tmp_path)
    data = bytearray((out / io.METRICS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # most flips in a Parquet file still read, with other values
    (out / io.METRICS_FILE).write_bytes(bytes(data))
    _one_line(_invoke("report", "--bootstrap", "0", str(out)), 2, "metrics.parquet is not the file this run wrote")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]  # a run from before checksums: read unverified, a broken table still one line
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / io.METRICS_FILE).write_bytes(bytes(data[: len(data) // 2]))
    _one_line(_invoke("compare", str(folders["reference"]), str(out)), 2, "metrics.parquet")


def test_polars_panics_on_broken_parquet_are_caught_and_silent(folders, capfd):
    data = (folders["reference"] / io.METRICS_FILE).read_bytes()
    outcomes = set()
    for offset in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        try:
            io.parquet_from_bytes(bytes(flipped))
            outcomes.add("read")
        except ValueError:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}
    assert capfd.readouterr().err == ""  # the Rust panic message and backtrace did not reach the terminal


def test_a_full_disk_inside_the_parquet_writer_is_an_oserror(tmp_path):
    frame = pl.DataFrame({"x": np.arange(200_000)})
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, limits[1]))
    try:
        with pytest.raises(OSError):  # what the runner turns into one line and a --resume hint
            io.write_metrics(frame, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert not list(tmp_path.iterdir())


# Hypothesis: saecli's own files mutated at random. A resumed run either finishes with the
# uninterrupted run's results or stops in one line; a finished run is read as it was or refused.
UNFINISHED = ["part0", "part1", "residuals0", "residuals3", "manifest.json"]
COMPLETE = ["metrics.parquet", "residuals.safetensors", "samples.parquet", "manifest.json"]
WRONG = [None, 7, -1, 2.5, "x", [], {}, [1], True]


def _target(folder: Path, name: str) -> Path:
    if name.startswith("part"):
        return _parts(folder)[int(name[-1])]
    if name.startswith("residuals") and name[-1].isdigit():
        return _residual_parts(folder)[int(name[-1])]
    return folder / name


def _mutate(path: Path, kind: str, where: float, donor: Path, data) -> None:
    raw = bytearray(path.read_bytes())
    spot = min(int(len(raw) * where), len(raw) - 1)
    if kind == "flip":
        raw[spot] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(raw))
    elif kind == "truncate":
        path.write_bytes(bytes(raw[:spot]))
    elif kind == "foreign" and donor.exists():
        shutil.copy(donor, path)
    elif path.name == "manifest.json":
        manifest = json.loads(raw)
        key = data.draw(st.sampled_from(sorted(manifest)))
        manifest[key] = data.draw(st.sampled_from(WRONG))
        path.write_text(json.dumps(manifest))


MUTATION = st.tuples(st.sampled_from(["flip", "truncate", "foreign", "retype"]), st.floats(0, 1))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(UNFINISHED), mutation=MUTATION, data=st.data())
def test_mutated_unfinished_run_resumes_correctly_or_stops_in_one_line(folders, tmp_path_factory, target, mutation, data):
    out = _copy(folders["unfinished"], tmp_path_factory.mktemp("mutated"))
    path = _target(out, target)
    _mutate(path, *mutation, donor=_target(folders["other_seed"], target), data=data)
    result = _invoke("run", "--resume", str(out))
    if result.exit_code == 0:
        _same_as(folders["reference"], out)
    else:
        _one_line(result, result.exit_code)
        assert result.exit_code in (1, 2)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(COMPLETE), mutation=MUTATION, data=st.data())
def test_mutated_finished_run_is_read_as_written_or_refused(folders, tmp_path_factory, target, mutation, data):
    out = _copy(folders["reference"], tmp_path_factory.mktemp("mutated"))
    donor = folders["other"] / target
    _mutate(out / target, *mutation, donor=donor, data=data)
    try:
        frame, manifest = io.read_run(out)
        residuals = load_residuals(out, frame, manifest)
        texts = load_texts(out, frame, manifest)
    except SaecliError as exc:
        assert "\n" not in exc.message
        return
    assert frame.equals(io.read_parquet(folders["reference"] / io.METRICS_FILE))
    kept = io.read_parquet(folders["reference"] / io.SAMPLES_FILE)
    assert texts is not None and [(s.id, s.prompt, s.fact, s.hallucination) for s in texts] == kept.drop("domain", "topic").rows()
    reference = read_residuals(folders["reference"] / io.RESIDUALS_FILE)
    assert residuals is not None and residuals.sample_ids == reference.sample_ids
    for key in reference.dense:
        assert np.array_equal(residuals.dense[key], reference.dense[key])
