"""A run holds no sample's text it is not analysing: the data checked in one pass, the selected
samples staged in the run folder and read back a window at a time, a new run's tokens on disk."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from helpers import alive_at_each_part

from saecli.config import RunConfig
from saecli.data import Sample, load_samples, select_samples
from saecli.errors import SaecliError
from saecli.plan import PackedTokens, SampleTokens
from saecli.staging import INPUT_DIR, TokenFile, data_fingerprint, stage_samples


def _records(n, domains=("a", "b", "c")):
    return [
        {
            "id": f"s{i}",
            "domain": domains[i % len(domains)],
            "prompt": f"Prompt {i}\u2028line",
            "fact": f"fact {i}",
            "hallucination": f"hall {i}",
            "complexity": i,
        }  # fmt: skip
        for i in range(n)
    ]


def _jsonl(path, records, bom=False):
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_a_jsonl_file_is_read_line_by_line_as_it_was_read_whole(tmp_path):
    records = _records(7)
    samples = load_samples(_jsonl(tmp_path / "d.jsonl", records, bom=True))
    # U+2028 inside a string is text, not a line break; the blank line at the end is skipped.
    assert [(s.id, s.domain, s.prompt, s.complexity) for s in samples] == [
        (r["id"], r["domain"], r["prompt"], r["complexity"]) for r in records
    ]


def test_bad_utf8_in_a_jsonl_file_names_its_byte_in_the_file(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _records(3))
    raw = path.read_bytes()
    at = raw.index(b"fact 2")
    path.write_bytes(raw[:at] + b"\xff" + raw[at + 1 :])
    with pytest.raises(SaecliError, match=rf"is not UTF-8 text: byte {at} \(0xff\)"):
        load_samples(path)


@pytest.mark.parametrize(
    "options",
    [{}, {"limit": 5}, {"limit": 5, "limit_order": "file"}, {"domains": ["b"]}, {"domains": ["c", "a"], "limit": 4}],
)
def test_a_selection_without_texts_reads_the_same_samples_again(tmp_path, options):
    path = _jsonl(tmp_path / "d.jsonl", _records(12))
    expected = load_samples(path, **options)
    selection = select_samples(path, keep=False, **options)
    assert selection.kept is None and selection.ids == [s.id for s in expected]
    assert list(selection.samples()) == expected


def test_staged_samples_come_back_by_window_with_the_same_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr("saecli.staging.PLAN_WINDOW", 4)  # several row groups from a few samples
    path = _jsonl(tmp_path / "d.jsonl", _records(11))
    expected = load_samples(path, limit=9)
    (tmp_path / "in").mkdir()
    staged, fingerprint = stage_samples(select_samples(path, limit=9, keep=False), tmp_path / "in")
    assert fingerprint == data_fingerprint(expected) and staged.ids == [s.id for s in expected]
    for positions in ([0, 1, 2], [3, 4, 5, 6, 7], [2, 5, 8], [8]):
        assert staged.window(np.array(positions)) == [expected[i] for i in positions]
    frames = list(staged.frames())
    assert [f.height for f in frames] == [4, 4, 1]
    assert sum((f["prompt"].to_list() for f in frames), []) == [s.prompt for s in expected]
    longest = staged.probe_candidates()  # a window's worth, the longest in characters, in input order
    assert len(longest) == 4 and [expected.index(s) for s in longest] == sorted(expected.index(s) for s in longest)
    monkeypatch.setattr("saecli.staging.PLAN_WINDOW", 64)
    assert staged.probe_candidates() == expected  # a run of at most one window probes every sample


def test_data_changed_between_the_check_and_the_staging_is_refused(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", _records(6))
    selection = select_samples(path, keep=False)
    _jsonl(path, _records(6)[::-1])
    (tmp_path / "in").mkdir()
    with pytest.raises(SaecliError, match="changed while the run was reading it"):
        stage_samples(selection, tmp_path / "in")


def test_tokens_on_disk_unpack_as_the_packed_tokens_do(tmp_path):
    rng = np.random.default_rng(0)

    def sample_tokens():
        prompt = rng.integers(0, 50_000, rng.integers(1, 9)).tolist()
        return SampleTokens(prompt, prompt + rng.integers(0, 9, 3).tolist(), prompt + [7], len(prompt), len(prompt))

    toks = [sample_tokens() for _ in range(23)]
    tokens = TokenFile(tmp_path)
    for start in (0, 5, 6, 17):  # appended in uneven windows
        stop = {0: 5, 5: 6, 6: 17, 17: 23}[start]
        tokens.append(PackedTokens.pack(toks[start:stop]))
    for start, stop in ((0, 23), (0, 1), (4, 9), (22, 23), (5, 17), (20, 40)):
        assert tokens.unpack(start, stop) == toks[start:stop]


@pytest.mark.slow
def test_a_run_holds_one_window_of_samples_and_leaves_no_staged_input(tmp_path, monkeypatch):
    import saecli.runner as runner_module

    window = 8
    alive = alive_at_each_part(monkeypatch, window, Sample)
    baseline = sum(type(o) is Sample for o in gc.get_objects())
    result = runner_module.execute(RunConfig(limit=40, batch_size=4), out=tmp_path / "run")
    assert result.manifest["status"] == "complete" and len(alive) == 10
    # Forty samples analysed, never more than one window's (plus the batch being written) alive at once.
    assert max(n for (n,) in alive) - baseline <= window + 4
    assert not (tmp_path / "run" / INPUT_DIR).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "manifest.json", "metrics.parquet", "residuals.safetensors", "samples.parquet"
    ]  # fmt: skip


class _Stop(Exception):
    pass


def _interrupted(tmp_path, monkeypatch, data, after=2):
    """A run of ``data`` stopped by an error after ``after`` batches (its parts and staged input kept)."""
    import saecli.runner as runner_module

    write_part, written = runner_module._write_part, []

    def stopping(*args):
        if len(written) == after:
            raise _Stop
        written.append(write_part(*args))

    monkeypatch.setattr(runner_module, "_write_part", stopping)
    config = RunConfig(data=str(data), batch_size=4, baselines=False)
    with pytest.raises(_Stop):
        runner_module.execute(config, out=tmp_path / "run")
    monkeypatch.setattr(runner_module, "_write_part", write_part)
    assert (tmp_path / "run" / INPUT_DIR / "staged.json").is_file()
    return config


@pytest.mark.slow
def test_a_resumed_run_takes_the_staged_samples_while_the_data_files_are_unchanged(tmp_path, monkeypatch):
    import saecli.runner as runner_module
    from saecli.compare import compare_frames

    data = _jsonl(tmp_path / "d.jsonl", _records(16))
    reference = runner_module.execute(RunConfig(data=str(data), batch_size=4, baselines=False), out=tmp_path / "ref")
    config = _interrupted(tmp_path, monkeypatch, data)
    reads = []
    selection = runner_module.run_selection
    monkeypatch.setattr(runner_module, "run_selection", lambda c: reads.append(c) or selection(c))
    result = runner_module.execute(config, resume=tmp_path / "run")
    assert reads == [] and compare_frames(reference.frame, result.frame, atol=0).passed
    assert not (tmp_path / "run" / INPUT_DIR).exists()

    # Data files that changed (here only a blank line more) are read again, and the run goes on if the
    # samples are the same.
    config = _interrupted(tmp_path / "again", monkeypatch, data)
    data.write_bytes(data.read_bytes() + b"\n")
    reads.clear()
    result = runner_module.execute(config, resume=tmp_path / "again" / "run")
    assert len(reads) == 1 and compare_frames(reference.frame, result.frame, atol=0).passed
