"""The benchmark harness: its statistics and verdicts, and a tiny interleaved run of our flows
(the peer libraries are an optional extra; `make bench` measures them)."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.models import ROWS
from benchmarks.run import BARE, bench_row, measure, ratio_interval, verdict, write_report


def test_ratio_of_medians_and_its_interval():
    ours, peer = [1.0, 1.1, 0.9, 1.0, 1.05] * 4, [2.0, 2.2, 1.8, 2.0, 2.1] * 4
    value, lo, hi = ratio_interval(peer, ours)
    assert value == pytest.approx(2.0) and lo <= 2.0 <= hi and lo > 1.5
    assert ratio_interval(ours, peer)[0] == pytest.approx(0.5)  # we are slower: below 1


def test_verdicts_follow_the_interval():
    assert "**meets**" in verdict((1.5, 1.3, 1.7))
    assert "**misses**" in verdict((1.0, 0.9, 1.1))
    assert "not resolved" in verdict((1.2, 1.1, 1.3))


def test_measure_interleaves_every_callable_every_round():
    calls = []
    times = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 1)
    assert [len(t) for t in times.values()] == [3, 3]
    timed = calls[4:]  # after two warm-up calls each
    assert timed == ["a", "b", "b", "a", "a", "b"]  # the starting library rotates


def test_a_tiny_run_writes_the_report(tmp_path):
    results = [
        (row, 1, bench_row(row, ["ours"], threads=1, rounds=2, inner=1, compile_ours=False))
        for row in ROWS
    ]
    for _, _, result in results:
        assert set(result["modes"]["train"]) == {"ours", BARE}
    out = write_report(results, tmp_path / "performance.md", rounds=2, inner=1)
    text = out.read_text()
    assert "ours vs our bare conditioner networks" in text and "28,880" in text


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r.name.endswith("_vectors")], ids=lambda r: r.name
)
def test_vector_rows_are_matched_in_parameter_count(row):
    """The peers' models of a vector row have exactly our weights (scalar parameters apart:
    normflows' learned activation slopes and estimator settings; peers that are not
    installed, the usual case outside `make bench`, are skipped)."""
    counts = {}
    for lib, build in row.builders.items():
        if lib != "ours" and importlib.util.find_spec(lib) is None:
            continue
        counts[lib] = build().num_weights
    assert len(set(counts.values())) == 1, counts


def test_gpu_step_benchmark_runs_and_projects_the_paper_budget(tmp_path):
    """benchmarks/gpu_steps.py on the CPU with a tiny batch: the paper's NICE model and
    optimiser step, timed; the projection is the paper's images at the measured rate."""
    import json

    from benchmarks import gpu_steps

    out = tmp_path / "steps.json"
    argv = ["--experiments", "nice/mnist_nice", "--device", "cpu", "--batch-size", "2",
            "--seconds", "0.1", "--out", str(out)]  # fmt: skip
    (result,) = gpu_steps.main(argv)
    assert json.loads(out.read_text()) == [result]
    assert result["paper_steps"] == 375000 and result["paper_batch_size"] == 200
    assert result["steps_timed"] >= 1 and result["images_per_s"] > 0
    images = result["paper_steps"] * result["paper_batch_size"]
    assert result["projected_hours"] == pytest.approx(images / result["images_per_s"] / 3600,
                                                      rel=0.01)  # fmt: skip
    assert result["peak_memory_mb"] is None and result["device"].startswith("CPU")
