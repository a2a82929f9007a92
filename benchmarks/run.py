"""``python -m benchmarks.run`` (``make bench``): this project against zuko, nflows, normflows and
FrEIA on matched models (:mod:`benchmarks.models`), written to ``reports/performance.md``.

For every row, mode (a training step: log_prob, mean, backward; sampling: a batch under
``no_grad``) and thread count, all libraries are timed **round-robin in one run**: each round
times every library once (``inner`` calls, averaged), the starting library rotating, so that
machine noise hits all alike. The report gives each library's median over rounds and
throughput relative to ours, and our speed-up over the fastest peer as a ratio of medians
with a 95% bootstrap interval over rounds; the goal (issue 9) is ≥ 1.2×. Our flows are also
timed against their bare conditioner networks (the same shapes, forward and backward) in the
same rounds: the rest is the flow's own bookkeeping.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.models import ROWS, Row, Subject, library_version
from common.files import write_atomic
from common.run.steps import CompiledGradient

GOAL = 1.2
BARE = "ours: conditioners only"
COMPILED = "ours + torch.compile"


def _train_step(subject: Subject, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        subject.module.zero_grad(set_to_none=True)
        (-subject.log_prob(x).mean()).backward()

    return step


def _compiled_train_step(subject: Subject, x: torch.Tensor) -> Callable[[], None]:
    """What the trainer does with ``train.compile: true``: the loss and its gradient from one
    compiled graph (:class:`common.run.steps.CompiledGradient`), put into ``.grad``."""
    gradient = CompiledGradient(subject.module, lambda flow, batch: -flow.log_prob(batch).mean())

    def step() -> None:
        _, grads = gradient(x)
        gradient.assign(grads)

    return step


def _sample(subject: Subject, n: int) -> Callable[[], None]:
    def draw() -> None:
        with torch.no_grad():
            subject.sample(n)

    return draw


def _bare_nets(subject: Subject, train: bool, passes: int = 1) -> Callable[[], None]:
    """Our flow's conditioner networks alone, on inputs of the shapes they see: once each for
    a training step, ``passes`` times each for a sample (D for an autoregressive flow)."""
    nets = subject.conditioners

    def run() -> None:
        if train:
            subject.module.zero_grad(set_to_none=True)
            sum(net(inp).sum() for net, inp in nets).backward()
        else:
            with torch.no_grad():
                for net, inp in nets:
                    for _ in range(passes):
                        net(inp)

    return run


def _time(fn: Callable[[], None], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner * 1e3  # ms per call


def measure(calls: dict[str, Callable[[], None]], rounds: int, inner: int) -> dict[str, list]:
    """Per-call milliseconds of each callable, ``rounds`` times, interleaved round-robin."""
    names = list(calls)
    for fn in calls.values():  # warm-up: allocator, data-dependent inits, lazy dispatch
        _time(fn, 2)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_time(calls[name], inner))
    return times


def ratio_interval(
    peer: list[float], ours: list[float], seed: int = 0
) -> tuple[float, float, float]:
    """median(peer) / median(ours) (> 1: we are faster) and its 95% bootstrap interval, the
    rounds resampled (paired, as each round timed both)."""
    rng = np.random.default_rng(seed)
    peer_a, ours_a = np.asarray(peer), np.asarray(ours)
    idx = rng.integers(0, len(peer_a), size=(2000, len(peer_a)))
    boot = np.median(peer_a[idx], axis=1) / np.median(ours_a[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(peer_a) / np.median(ours_a)), float(lo), float(hi)


def verdict(ratio: tuple[float, float, float]) -> str:
    value, lo, hi = ratio
    text = f"{value:.2f}× [{lo:.2f}, {hi:.2f}]"
    if lo >= GOAL:
        return f"{text}: **meets** ≥ {GOAL}×"
    if hi < GOAL:
        return f"{text}: **misses** {GOAL}×"
    return f"{text}: not resolved (the interval straddles {GOAL}×)"


def bench_row(
    row: Row, libraries: list[str], threads: int, rounds: int, inner: int, compile_ours: bool
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = row.make_input()
    subjects: dict[str, Subject] = {}
    skipped = {}
    for lib in libraries:
        if lib not in row.builders:
            continue
        try:
            subjects[lib] = row.builders[lib]()
        except ImportError as exc:  # a peer not installed: say so in the report
            skipped[lib] = str(exc)
    for s in subjects.values():  # data-dependent inits (ActNorm) happen in training mode
        s.module.train()
        s.log_prob(x)
    if (
        compile_ours and "ours" in subjects and row.compile_mode != "none"
    ):  # what `train.compile: true` does in the trainer
        ours = subjects["ours"]
        subjects[COMPILED] = Subject(ours.module, torch.compile(ours.log_prob),
                                     torch.compile(ours.sample), note=ours.note)  # fmt: skip
    out = {"subjects": subjects, "skipped": skipped, "modes": {}}
    for mode in ("train", "sample"):
        calls = {}
        for lib, s in subjects.items():
            s.module.train(mode == "train")
            if mode == "sample":
                calls[lib] = _sample(s, row.batch)
            else:
                graph = lib == COMPILED and row.compile_mode == "graph"
                calls[lib] = (_compiled_train_step if graph else _train_step)(s, x)
        if "ours" in subjects:
            passes = 1 if mode == "train" else row.sample_passes
            calls[BARE] = _bare_nets(subjects["ours"], train=mode == "train", passes=passes)
        out["modes"][mode] = measure(calls, rounds, inner)
    return out


def _machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch threads available, {platform.platform()}"


def _section(row: Row, threads: int, result: dict) -> list[str]:
    lines = [f"### {row.title}, {threads} thread{'s' if threads > 1 else ''}", ""]
    subjects = result["subjects"]
    for mode, times in result["modes"].items():
        ours = times["ours"]
        med = {lib: statistics.median(t) for lib, t in times.items()}
        rows = []
        for lib in sorted(times, key=med.get):
            params = f"{subjects[lib].num_params:,}" if lib in subjects else "—"
            q1, q3 = np.percentile(times[lib], [25, 75])
            rows.append(
                f"| {lib} | {params} | {med[lib]:.2f} | {q1:.2f}–{q3:.2f} | "
                f"{med[lib] / med['ours']:.2f} |"
            )
        peers = [lib for lib in times if lib not in ("ours", BARE, COMPILED)]
        what = "training step (log_prob + backward)" if mode == "train" else "sampling"
        lines += [
            f"**{what}**, batch {row.batch}",
            "",
            "| library | params | median ms | IQR ms | time / ours |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
        bare = med["ours"] / med[BARE]
        overhead = med["ours"] - med[BARE]
        if peers:
            fastest = min(peers, key=med.get)
            lines.append(
                f"- ours vs the fastest peer ({fastest}): "
                f"{verdict(ratio_interval(times[fastest], ours))}"
            )
            if COMPILED in times:
                lines.append(
                    f"- ours + torch.compile (`compile_mode: {row.compile_mode}`) vs {fastest} "
                    "(eager, as the library runs by "
                    f"default): {verdict(ratio_interval(times[fastest], times[COMPILED]))}"
                )
            # the most any flow built on these networks could gain over that peer
            ceiling = med[fastest] / med[BARE]
            lines.append(
                f"- ceiling: {fastest} takes {ceiling:.2f}× the time of our bare networks, so "
                f"even a flow with no overhead at all would be {ceiling:.2f}× faster than it"
            )
        lines += [
            f"- ours vs our bare conditioner networks: {bare:.2f}× their time (aim: ≤ {GOAL}×); "
            f"the flow's own work (splits, elementwise maps, log-determinants, permutations, "
            f"base density) costs {overhead:.2f} ms",
            "",
        ]
    return lines


def write_report(results: list[tuple[Row, int, dict]], out: Path, rounds: int, inner: int) -> Path:
    libraries = ["ours", "zuko", "nflows", "normflows", "FrEIA"]
    versions = ", ".join(f"{lib} {library_version(lib)}" for lib in libraries)
    notes = {}
    for row, _, result in results:
        for lib, s in result["subjects"].items():
            if s.note:
                notes[(row.name, lib)] = s.note
        for lib, why in result["skipped"].items():
            notes[(row.name, lib)] = f"not measured: {why}"
    lines = [
        "# Performance against peer libraries",
        "",
        "Generated by `make bench` (`python -m benchmarks.run`). Do not edit by hand.",
        "",
        f"- when: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {_machine()}",
        f"- versions: torch {torch.__version__}, {versions}",
        f"- method: {rounds} rounds, each timing every library {inner} times in a row "
        "(mean per call), libraries interleaved round-robin with a rotating start; medians "
        "over rounds; the speed-up over the fastest peer is a ratio of medians with a 95% "
        "bootstrap interval over rounds. Matched models (`benchmarks/models.py`); parameter "
        "counts in the tables. `ours + torch.compile` is our flow compiled as the trainer "
        "does with `train.compile: true` and the row's `train.compile_mode` (`graph`: a "
        "training step's loss and gradient as one graph, `common/run/steps.py`; `loss`: the "
        "log-density compiled, autograd's backward), and sampling compiled; the peers run "
        "eager, as their libraries do by default. The verdicts on the goal are on eager mode.",
        "",
    ]
    if notes:
        lines += ["Where a library's model differs:", ""]
        lines += [f"- {row} / {lib}: {note}" for (row, lib), note in sorted(notes.items())]
        lines.append("")
    for row, threads, result in results:
        lines += _section(row, threads, result)
    return write_atomic(out, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--inner", type=int, default=3, help="calls per library per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--rows", nargs="+", default=[r.name for r in ROWS], choices=[r.name for r in ROWS]
    )
    parser.add_argument(
        "--libraries", nargs="+", default=["ours", "zuko", "nflows", "normflows", "FrEIA"]
    )
    parser.add_argument("--out", type=Path, default=Path("reports/performance.md"))
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile variant of our flows (it compiles ~1 min)",
    )
    args = parser.parse_args(argv)
    results = []
    for row in (r for r in ROWS if r.name in args.rows):
        for threads in args.threads:
            print(f"{row.name}, {threads} thread(s) ...", flush=True)
            results.append(
                (
                    row,
                    threads,
                    bench_row(
                        row, args.libraries, threads, args.rounds, args.inner, not args.no_compile
                    ),
                )
            )
    print(f"wrote {write_report(results, args.out, args.rounds, args.inner)}")


if __name__ == "__main__":
    main()
