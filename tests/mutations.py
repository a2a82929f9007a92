"""Mutation check: does the test suite catch the one-line bugs a review found it let through?

``python -m tests.mutations`` copies the repository's tracked files to a temporary folder once
per mutation, applies the one-line bug there, runs the tests that should catch it, and prints
caught / MISSED for each; exit status 1 if any is missed. Not part of ``make test`` (5 min
on 2 cores); run it after changing the tests these bugs hide from.

The list is issue 11, item 12: the ten bugs that once passed the whole suite; then issue 12's
(conditional labels, the MAF bundle's preprocessing, the inverse's weight cache, the cost
measurement's direction); issue 16's (data-parallel statistics and shards, bf16 and
channels-last training).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]


class Mutation(NamedTuple):
    name: str
    file: str
    old: str  # exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must fail


MUTATIONS = [
    Mutation("KL estimate adds -log Z-hat", "common/run/objectives.py",
             '"kl": -log_w.mean().item() + log_z_hat,', '"kl": -log_w.mean().item() - log_z_hat,',
             ("tests/test_failures.py::test_kl_estimate_adds_log_z_hat",)),
    Mutation("LR schedule not restored on resume", "common/run/loop.py",
             'self.scheduler.load_state_dict(ckpt["scheduler"])', "pass",
             ("tests/test_failures.py::test_resume_restores_the_learning_rate_schedule",)),
    Mutation("test score from the last weights, not best.pt", "common/run/loop.py",
             "model.load_state_dict(torch.load(kept, map_location=self.device, weights_only=True))",
             "pass", ("tests/test_failures.py::test_the_test_score_is_the_best_checkpoints",)),
    Mutation("an already-downloaded file is not checked", "common/data/download.py",
             "    if dest.exists():\n        verify_md5(dest, md5)\n",
             "    if dest.exists():\n",
             ("tests/test_failures.py::test_an_already_downloaded_file_is_checked",)),
    Mutation("reverse-KL test metrics not logged", "common/run/loop.py",
             "tracker.log_metrics(final, state.step)",
             "tracker.log_metrics({} if objective.select_on is None else final, state.step)",
             ("tests/test_failures.py::test_reverse_kl_logs_its_test_metrics",)),
    Mutation("ablation verdict: comparison direction flipped", "common/run/reports/compare.py",
             "if p < ALPHA and t.diff < 0:", "if p < ALPHA and t.diff > 0:",
             ("tests/test_reports.py",)),
    Mutation("baseline verdict: better/worse sign flipped", "common/run/reports/compare.py",
             "gain, low, high = -w.diff, -w.high, -w.low",
             "gain, low, high = w.diff, w.low, w.high",
             ("tests/test_reports.py",)),
    Mutation("verdict on one seed", "common/run/reports/stats.py",
             "if len(a) < 2 or len(b) < 2:", "if len(a) < 1 or len(b) < 1:",
             ("tests/test_reports.py",)),
    Mutation("Flow.sample ignores its temperature", "common/flows/flow.py",
             "z = self.base.sample(n, temperature)", "z = self.base.sample(n)",
             ("tests/test_failures.py::test_flow_sample_applies_its_temperature",)),
    Mutation("Polyak averaging with 1 - decay", "common/run/loop.py",
             "get_ema_multi_avg_fn(decay)", "get_ema_multi_avg_fn(1 - decay)",
             ("tests/test_failures.py::test_polyak_average_moves_by_one_minus_decay",)),
    # issue 12
    Mutation("a conditional batch's labels shuffled against its examples",
             "common/run/objectives.py", 'context = self.context("train", index)',
             'context = self.context("train", index.flip(0))',
             ("tests/test_maf_iaf.py::test_conditional_batches_carry_their_own_labels_and_scores_use_them",)),
    Mutation("POWER's noise drawn in the wrong order", "common/data/maf_tabular.py",
             "    voltage_noise = 0.01 * rng.rand(n, 1)\n    gap_noise = 0.001 * rng.rand(n, 1)\n",
             "    gap_noise = 0.001 * rng.rand(n, 1)\n    voltage_noise = 0.01 * rng.rand(n, 1)\n",
             ("tests/test_maf_tabular.py",)),
    Mutation("masked weights left cached after an inverse", "common/flows/autoregressive.py",
             "        for m in layers:\n            m._masked = None\n",
             "        for m in layers:\n            pass\n",
             ("tests/test_autoregressive.py::test_inverse_forms_masked_weights_once_and_leaves_none_behind",)),
    Mutation("the cost measurement times IAF as MAF", "papers/maf_iaf/cost.py",
             'layer_cls = MaskedAutoregressive if kind == "MAF" else InverseAutoregressive',
             'layer_cls = MaskedAutoregressive if kind == "IAF" else InverseAutoregressive',
             ("tests/test_maf_iaf.py::test_cost_counts_one_pass_for_the_fast_direction_and_d_for_the_slow",)),
    Mutation("series gradient: one Neumann term too many", "common/flows/residual.py",
             "if k < n:  # Σ_{k=0}^{n-1}", "if k <= n:  # Σ_{k=0}^{n-1}",
             ("tests/test_residual.py::"
              "test_series_gradient_is_unbiased_for_the_truncated_series_gradient",)),
    Mutation("multi-scale i-ResNet: an input activation on the first block",
             "papers/iresnet/model.py",
             "input_activation=k + b > 0,", "input_activation=True,",
             ("tests/test_iresnet.py::test_multi_scale_model_passes_the_check",)),
    Mutation("index: the flows with the shared budget named as exceptions",
             "common/run/reports/index.py",
             "        if other != b:", "        if other == b:",
             ("tests/test_reports.py::test_index_budget_sentence_says_whether_runs_converged",)),
    Mutation("CNF: the integrated trace returned with the wrong sign",
             "common/flows/continuous.py",
             "return out[0][-1], out[1][-1]", "return out[0][-1], -out[1][-1]",
             ("tests/test_continuous.py::test_linear_dynamics_give_the_analytic_log_det_and_end_time",)),
    Mutation("NFE: the step's total logged as backward evaluations", "common/run/loop.py",
             "step_nfe = (forward, total - forward, 1)", "step_nfe = (forward, total, 1)",
             ("tests/test_ffjord.py::test_training_logs_forward_and_backward_function_evaluations",)),
    Mutation("forward tangents: the activation's slope dropped", "common/flows/continuous.py",
             "                v = v * slope.unsqueeze(1)\n", "                pass\n",
             ("tests/test_continuous.py::test_forward_tangents_and_vector_jacobian_products_agree",)),
    Mutation("ordering claim 'first': the others' order required too",
             "common/run/reports/compare.py",
             "        needed = pairs\n", "        needed = list(zip(names, names[1:]))\n",
             ("tests/test_reports.py::test_first_only_claim_holds_without_ordering_the_rest",)),
    # issue 15: pipeline parent runs, raw downloads into the DVC cache, the compute table
    Mutation("every job of an invocation makes its own parent run", "common/run/tracking.py",
             "            if found:\n", "            if False:\n",
             ("tests/test_tracking.py::test_runs_of_one_pipeline_invocation_nest_under_one_parent_per_paper",)),
    Mutation("stash caches a download without checking its MD5", "common/data/dvc_store.py",
             "    verify_md5(raw, md5)\n", "",
             ("tests/test_dvc.py::test_stash_refuses_a_file_that_does_not_match_its_dvc_record",)),
    Mutation("peak memory averaged over seeds", "common/run/reports/paper.py",
             'g.benchmark("max_rss", reduce=max)', 'g.benchmark("max_rss")',
             ("tests/test_reports.py::test_compute_table_reads_snakemake_benchmarks",)),
    # issue 16: data-parallel training and the GPU path
    Mutation("ActNorm initialised from its rank's shard only", "common/flows/image.py",
             "mean, var, _ = channel_moments(x, unbiased=True)",
             "mean, var = x.mean(dim=[0, 2, 3]), x.var(dim=[0, 2, 3])",
             ("tests/test_distributed.py::test_two_ranks_take_the_steps_of_one_process",)),
    Mutation("network batch norm not synchronised across ranks", "common/flows/distributed.py",
             "if not self.training or world_size() == 1:", "if True:",
             ("tests/test_distributed.py::test_two_ranks_take_the_steps_of_one_process",)),
    Mutation("every rank trains on the same shard", "common/run/objectives.py",
             "return type(batch)(t.chunk(world_size)[rank] for t in batch)",
             "return type(batch)(t.chunk(world_size)[0] for t in batch)",
             ("tests/test_distributed.py::test_two_ranks_take_the_steps_of_one_process",)),
    Mutation("bf16 requested but the networks run in float32", "common/run/loop.py",
             "with network_autocast(self.network_dtype):", "with network_autocast(None):",
             ("tests/test_precision.py",)),
    Mutation("channels-last model fed NCHW batches", "common/run/loop.py",
             "            batch = _channels_last(batch)\n", "            pass\n",
             ("tests/test_precision.py",)),
]  # fmt: skip


def tracked_copy(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


def pytest(root: Path, tests: tuple[str, ...]) -> bool:
    """True when the tests pass."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=root, capture_output=True, text=True).returncode == 0


def run(mutation: Mutation, root: Path) -> bool:
    """True when the tests fail on the mutated copy (the bug is caught)."""
    path = root / mutation.file
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the line to mutate is not in {mutation.file} once")
    path.write_text(text.replace(mutation.old, mutation.new))
    try:
        return not pytest(root, mutation.tests)
    finally:
        path.write_text(text)


def main() -> None:
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracked_copy(root)
        every_test = tuple(sorted({t for m in MUTATIONS for t in m.tests}))
        if not pytest(root, every_test):  # else a "caught" would mean nothing
            raise SystemExit("the tests fail without any mutation: fix them first")
        for mutation in MUTATIONS:
            caught = run(mutation, root)
            missed += not caught
            print(f"{'caught' if caught else 'MISSED'}  {mutation.name}", flush=True)
    raise SystemExit(1 if missed else 0)


if __name__ == "__main__":
    main()
