"""One RunConfig from the flag to every path that runs the engine: run, run --ray, bench, bench --ray,
compare and doctor resolve the same options the same way (defaults < the preset's [defaults] <
flags), and the help says what is true."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from saecli.cli import app
from saecli.config import RunConfig
from saecli.errors import SaecliError

runner = CliRunner()


class Captured(SaecliError):
    """Raised where a command hands its RunConfig to the engine: the test has what it came for (a
    SaecliError, so the command ends there as on any one-line error)."""

    def __init__(self) -> None:
        super().__init__("captured")


@pytest.fixture
def capture(monkeypatch, tmp_path):
    """The RunConfig each path hands to the engine, without running it (in an empty folder: bench
    makes its output folder first)."""
    import saecli.bench.ray
    import saecli.cli.bench
    import saecli.cli.compare
    import saecli.cli.doctor
    import saecli.cli.run

    monkeypatch.chdir(tmp_path)
    seen: dict[str, Any] = {}

    def grab(name: str, position: int = 0, key: str | None = None):
        def fake(*args: Any, **kwargs: Any) -> Any:
            seen[name] = kwargs[key] if key else args[position]
            seen[name + ":kwargs"] = kwargs
            raise Captured

        return fake

    monkeypatch.setattr(saecli.cli.run, "execute", grab("run"))
    monkeypatch.setattr(saecli.cli.bench, "sweep", grab("bench"))
    monkeypatch.setattr(saecli.bench.ray, "ray_sweep", grab("bench --ray"))
    monkeypatch.setattr(saecli.cli.compare, "compare_live", grab("compare"))
    monkeypatch.setattr(saecli.cli.doctor, "diagnose", grab("doctor"))
    monkeypatch.setattr("saecli.cluster.import_ray", lambda: None)  # --ray paths reach the engine without a cluster
    return seen


def _invoke(args: list[str]) -> Any:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "error: captured" in result.output, (args, result.output)
    return result


def _common(config: RunConfig) -> dict[str, Any]:
    """The fields every path shares (mode and the batch size are each command's own)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in ("mode", "batch_size")}


def test_bench_takes_domains_with_spaces(capture):
    _invoke(["bench", "--domains", "entity, logical", "--no-sequential"])
    assert capture["bench"].domains == ("entity", "logical")


def test_bench_ray_honours_columns_baselines_and_seed(capture, tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("q,right,wrong\nThe capital of France is, Paris, Lyon\n")
    _invoke(["bench", "--ray", "--workers", "1", "--data", str(table), "--columns", "prompt=q,fact=right,hallucination=wrong",
             "--baselines", "off", "--seed", "5", "--truncate"])  # fmt: skip
    config = capture["bench --ray"]
    assert config.columns == "prompt=q,fact=right,hallucination=wrong" and config.seed == 5 and config.truncate
    assert capture["bench --ray:kwargs"]["baselines"] == "off"


def test_bench_ray_refuses_the_sequential_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("saecli.cluster.import_ray", lambda: None)
    result = runner.invoke(app, ["bench", "--ray", "--sequential"])
    assert result.exit_code == 2 and "sequential reference runs on one machine" in result.output
    assert list(tmp_path.iterdir()) == []


def test_doctor_reads_a_table_through_columns(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("q,right,wrong\nThe capital of France is,Paris,Lyon\nThe sky is,blue,green\n")
    result = runner.invoke(
        app, ["doctor", "--data", str(table), "--columns", "prompt=q,fact=right,hallucination=wrong", "--json"]
    )
    report = json.loads(result.stdout)
    assert report["config"]["columns"] == "prompt=q,fact=right,hallucination=wrong"
    assert {c["name"]: c for c in report["checks"]}["memory"]["status"] != "fail", report["checks"]


@pytest.fixture
def preset_with_defaults(tmp_path) -> Path:
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
    text = re.sub(r"\[defaults\][^\[]*", "", tiny.read_text())
    path = tmp_path / "mine.toml"
    path.write_text(text + '\n[defaults]\nseed = 7\nnoise_std = 0.25\nlimit = 6\nlimit_order = "file"\nbatch_size = 3\n')
    return path


@pytest.mark.parametrize("command", [["run"], ["bench", "--no-sequential"], ["bench", "--ray"], ["compare"], ["doctor"]])
def test_every_command_honours_the_presets_defaults(capture, preset_with_defaults, command):
    _invoke([*command, "--config", str(preset_with_defaults)])
    name = "bench --ray" if "--ray" in command else command[0]
    config = capture[name]
    assert (config.seed, config.noise_std, config.limit, config.limit_order) == (7, 0.25, 6, "file")


@pytest.mark.parametrize(
    "command", [["run"], ["sequential"], ["bench", "--no-sequential"], ["bench", "--ray"], ["compare"], ["doctor"]]
)
def test_every_command_takes_layers_and_limit_order(capture, command):
    _invoke([*command, "--preset", "gpt2-small-shape", "--layers", "1,5,9", "--limit-order", "file"])
    name = "bench --ray" if "--ray" in command else "run" if command == ["sequential"] else command[0]
    assert (capture[name].layers, capture[name].limit_order) == ((1, 5, 9), "file")


def test_flags_beat_the_presets_defaults_everywhere(capture, preset_with_defaults):
    for command, name in (
        (["run"], "run"),
        (["bench", "--no-sequential"], "bench"),
        (["compare"], "compare"),
        (["doctor"], "doctor"),
    ):
        _invoke([*command, "--config", str(preset_with_defaults), "--seed", "9"])
        assert capture[name].seed == 9


def test_workers_is_one_type_in_run_and_bench():
    from typer.main import get_command

    commands = get_command(app).commands
    types = {
        name: next(p for p in commands[name].params if p.name == "workers").type_descriptor.annotation
        for name in ("run", "bench")
    }
    assert types["run"] == types["bench"]
    result = runner.invoke(app, ["run", "--ray", "--workers", "1,2"])
    assert result.exit_code == 2 and "one number of Ray workers" in result.output


def test_resume_finds_the_unfinished_samples_from_the_parts_positions():
    import numpy as np

    from saecli.runner import unfinished

    held = [np.array([4, 0, 2]), np.arange(6, 2000, 2)]
    assert unfinished(2000, held).tolist() == list(range(1, 2000, 2))
    assert unfinished(3, []).tolist() == [0, 1, 2]


def test_the_merge_refuses_parts_that_miss_a_sample_or_hold_one_twice(tmp_path):
    import numpy as np

    from saecli.errors import SaecliError
    from saecli.parts import Parts
    from saecli.runner import _every_sample_once

    whole = Parts(positions=[np.array([2, 0]), np.array([1, 3])])
    _every_sample_once(whole, 4, tmp_path)
    for positions in ([np.array([2, 0]), np.array([1])], [np.array([2, 0, 1]), np.array([1, 3])]):
        with pytest.raises(SaecliError, match="twice, or miss one"):
            _every_sample_once(Parts(positions=positions), 4, tmp_path)


# -- the help tells the truth ---------------------------------------------------------------------

COMMANDS = ("run", "sequential", "bench", "compare", "doctor", "report")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_bool_metavar_and_its_own_json_text(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    json_line = next(line for line in result.output.splitlines() if "--json" in line)
    assert ("manifest" in json_line) == (command in ("run", "sequential")), json_line


@pytest.mark.parametrize(("command", "default"), [("run", "runs/<UTC time>-<preset>"), ("bench", "bench/<UTC time>-<preset>")])
def test_help_shows_the_default_folder_whole(command, default):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert default in result.output


# -- the property: every path resolves the same options to the same configuration -----------------

OPTION_SETS = st.fixed_dictionaries(
    {"--limit": st.integers(1, 50)},  # given: bench's own default (4 × the largest size) is not run's
    optional={
        "--seed": st.integers(-(2**40), 2**40),
        "--limit-order": st.sampled_from(["file", "balanced"]),
        "--layers": st.sampled_from(["1,5,9", "0, 6,11"]),  # with a preset that has an [sae_template]
        "--noise-std": st.sampled_from(["0", "0.05", "0.3", "2.5"]),
        "--domains": st.sampled_from(["entity", "entity,logical", " temporal , adversarial "]),
        "--dtype": st.sampled_from(["float32", "float64"]),
        "--device": st.sampled_from(["auto", "cpu"]),
        "--threads": st.integers(1, 4),
        "--truncate": st.just(None),
        "--no-baselines": st.just(None),
        "--columns": st.sampled_from(["prompt=prompt", "fact=fact,hallucination=hallucination"]),
    },
)


def _argv(options: dict[str, Any]) -> list[str]:
    return [part for flag, value in options.items() for part in ((flag,) if value is None else (flag, str(value)))]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(options=OPTION_SETS)
def test_every_path_resolves_the_same_configuration(capture, options):
    argv = _argv(options) + (["--preset", "gpt2-small-shape"] if "--layers" in options else [])
    if "--dtype" not in options:
        argv += ["--dtype", "float32"]  # compare's own default is float64: the same options, given explicitly
    bench_baselines = ["--baselines", "off"] if "--no-baselines" in options else []
    plain = [a for a in argv if a != "--no-baselines"]
    paths = {
        "run": ["run", *argv],
        "run --ray": ["run", "--ray", *argv],
        "bench": ["bench", "--no-sequential", *plain, *bench_baselines],
        "bench --ray": ["bench", "--ray", *plain, *bench_baselines],
        "compare": ["compare", *argv],
    }
    configs = {}
    for name, args in paths.items():
        capture.clear()
        _invoke(args)
        configs[name] = _common(capture["run" if name == "run --ray" else name])
    reference = configs["run"]
    for name, config in configs.items():
        assert config == reference, (name, options)


@pytest.mark.slow
def test_every_path_records_the_same_configuration(ray_cluster, tmp_path):
    """The same options on every path, run for real: the manifests and compare --json record one
    resolved configuration (mode and batch size aside, each path's own). bench.json records its own
    (tests/test_bench.py, tests/test_ray_tools.py); the property test above checks every path resolves alike."""
    options = ["--limit", "4", "--seed", "3", "--noise-std", "0.2", "--domains", "entity, logical", "--dtype", "float64",
               "--threads", "1", "--truncate"]  # fmt: skip
    paths = {
        "run": ["run", *options, "--batch-size", "2", "--out", str(tmp_path / "run"), "--json"],
        "run --ray": ["run", "--ray", "--workers", "1", *options, "--batch-size", "2", "--out", str(tmp_path / "ray"), "--json"],
        "compare": ["compare", *options, "--batch-size", "2", "--json"],
    }
    recorded = {}
    for name, args in paths.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (name, result.output)
        recorded[name] = {k: v for k, v in json.loads(result.stdout)["config"].items() if k not in ("mode", "batch_size")}
    assert recorded["run"]["domains"] == ["entity", "logical"] and recorded["run"]["truncate"] is True
    for name, config in recorded.items():
        assert config == recorded["run"], name


@pytest.mark.parametrize(
    "args", [["bench", "--sizes", "1,,4"], ["bench", "--ray", "--workers", "1,"], ["compare", "--sizes", ",8"]]
)
def test_an_empty_element_in_a_list_of_counts_is_refused(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("saecli.cluster.import_ray", lambda: None)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "positive whole numbers separated by commas" in result.output, result.output
    assert list(tmp_path.iterdir()) == []
