"""The benchmarks, run as `make bench` runs them (a subprocess each) at the smallest sizes their options
allow: what they print must still be the JSON lines benchmarks/README.md's tables are built from.

Not timed tests: no figure is compared with a speed. Each line must carry its bench name, the figure of the
path measured, the reference's figure measured in the same run and their ratio; figures must be finite and
> 0, and the printed ratio must be the printed figure over the printed reference (a script that labelled
its paths the wrong way round would print the reciprocal). Results go to the test's tmp dir
(VLA_BENCH_RESULTS_DIR), datasets to the session's cache (VLA_HYDRA_DATA_DIR), scratch dirs to TMPDIR:
nothing is written into the repository.

The slow ones (`make test-full`): `--compile` (10-20 s of torch.compile per graph on a 2-core CPU),
bench_cluster.py (every part is CLI subprocesses, ~30 s each at the least; its sweep needs the local
SLURM) and runs of the longer comparisons (grpo_vs_ppo.py, il_vs_bc.py, td3bc_crosscheck.py: 20-50 s);
of those scripts the fast tests check that `--help` runs. The fast ones take ~75 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from tests.cluster.conftest import slurm  # noqa: F401  (the fixture, for the sweep part of bench_cluster.py)
from tests.conftest import run_module

# bench (bench_ppo.py: metric) -> (figure, reference, ratio) triples: ratio = figure / reference
RATIOS = {
    "bc_updates_per_s": [("lightning_median", "plain_torch_median", "ratio_lightning_over_plain")],
    "cli_cfg_job_seconds": [("median", "reference_import_lightning_median", "ratio_over_import_lightning")],
    "launch_to_first_step_seconds": [
        ("median", "reference_import_lightning_median", "ratio_over_import_lightning")
    ],
    # a speed-up: the reference's time over ours
    "load_d4rl_hdf5_to_tensors": [("reference_median_s", "ours_median_s", "speedup_over_reference")],
    "offline_updates_per_s": [
        ("lightning_median", "plain_loop_median", "ratio_lightning_over_plain"),
        ("lightning_median", "corl_style_median", "ratio_lightning_over_corl_style"),  # --corl
        ("lightning_compiled_median", "plain_loop_median", "ratio_compiled_over_plain"),  # --compile
    ],
    **{
        metric: [("lightning_median", "plain_median", "ratio")]
        for metric in (
            "env_steps_per_s",
            "env_steps_per_cpu_s",
            "env_steps_per_s_vs_cleanrl_style",
            "env_steps_per_cpu_s_vs_cleanrl_style",
        )
    },
    "sac_env_steps_per_s": [
        ("lightning_median", "plain_loop_median", "ratio_lightning_over_plain"),
        ("lightning_cpu_median", "plain_loop_cpu_median", "ratio_cpu_lightning_over_plain"),
    ],
    "sac_env_steps_per_s_vs_cleanrl_style": [
        ("lightning_median", "cleanrl_style_median", "ratio_lightning_over_cleanrl_style"),
        ("lightning_cpu_median", "cleanrl_style_cpu_median", "ratio_cpu_lightning_over_cleanrl_style"),
    ],
    # bench_cluster.py rounds what it prints (ratio to 3 decimals)
    "sweep": [("slurm_wall_s", "local_wall_s", "slurm_over_local")],
    "ddp": [("samples_per_s_ddp2", "samples_per_s_1proc", "ddp2_over_1proc")],
    "ddp_online": [("env_steps_per_s_ddp2", "env_steps_per_s_1proc", "ddp2_over_1proc")],
}
ROUNDED = {"sweep", "ddp", "ddp_online"}
# runs to a budget, no reference: (steps-to-solve key, figures)
SOLVE = {
    "steps_to_solve": ("steps_to_solve", ["run_wall_seconds"]),
    "sac_steps_to_solve": ("env_steps_to_solve", ["run_wall_seconds", "budget"]),
}
HEADER = ["date", "machine", "torch", "threads", "device"]


def bench_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """Results files, datasets and scratch dirs of a benchmark run outside the repository."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {
        "VLA_BENCH_RESULTS_DIR": str(tmp_path / "results"),
        "VLA_HYDRA_DATA_DIR": str(data_dir),
        "TMPDIR": str(tmp_path / "tmp"),
    }


def run_bench(script: str, *args: str, tmp_path: Path, data_dir: Path) -> list[dict]:
    """`python -m benchmarks.<script> args`; its stdout lines as JSON, checked against the results file it
    appended to (under tmp_path, not benchmarks/results/)."""
    proc = run_module(f"benchmarks.{script}", *args, env=bench_env(tmp_path, data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(text) for text in proc.stdout.splitlines() if text.strip()]
    assert lines, f"{script} printed nothing"
    saved = (tmp_path / "results" / f"{script}.jsonl").read_text().splitlines()
    assert [json.loads(text) for text in saved] == lines
    return lines


def name_of(line: dict) -> str:
    return line.get("metric", line["bench"])


def positive(line: dict, key: str) -> float:
    value = line[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    return value


def check_line(line: dict) -> None:
    """The keys README's tables read, figures finite and > 0, ratio = figure / reference as printed."""
    name = name_of(line)
    assert all(key in line for key in HEADER), (name, sorted(line))
    if name in SOLVE:
        steps_key, figures = SOLVE[name]
        assert line[steps_key] is None or positive(line, steps_key)
        for key in figures:
            positive(line, key)
        return
    assert name in RATIOS, f"a bench this test does not know: {name} (add it to RATIOS)"
    # the first triple is always printed; the others with a flag (--corl, --compile, ...)
    assert RATIOS[name][0][2] in line, (name, sorted(line))
    for figure, reference, ratio in RATIOS[name]:
        if ratio not in line:
            continue
        ours, theirs, printed = positive(line, figure), positive(line, reference), positive(line, ratio)
        tolerance = {"rel_tol": 5e-3, "abs_tol": 1e-3} if name in ROUNDED else {"rel_tol": 1e-9}
        assert math.isclose(printed, ours / theirs, **tolerance), (name, ratio, printed, ours / theirs)
    # a median is the median of the runs printed next to it (<x>_all; bench_ppo.py: <x>_runs)
    for key, value in line.items():
        if "median" in key:
            stem = key.split("median")[0]
            runs = line.get(f"{stem}all", line.get(f"{stem}runs"))
            if runs is not None:
                assert all(math.isfinite(r) and r > 0 for r in runs), (name, key, runs)
                assert statistics.median(runs) == value, (name, key)


def check(lines: list[dict], expected: list[str]) -> None:
    assert [name_of(line) for line in lines] == expected
    for line in lines:
        check_line(line)


def test_bench_bc(tmp_path, data_dir):
    lines = run_bench(
        "bench_bc", "--updates", "100", "--rounds", "1", "--cli-repeats", "1", tmp_path=tmp_path,
        data_dir=data_dir,
    )  # fmt: skip
    check(lines, ["bc_updates_per_s", "cli_cfg_job_seconds", "launch_to_first_step_seconds"])
    assert lines[0]["updates"] == 100 and len(lines[0]["lightning_all"]) == 1


def test_bench_load(tmp_path, data_dir):
    lines = run_bench(
        "bench_load", "--transitions", "3000", "--repeats", "1", tmp_path=tmp_path, data_dir=data_dir
    )
    check(lines, ["load_d4rl_hdf5_to_tensors"] * 2)
    assert [line["variant"] for line in lines] == ["no_next_observations", "with_next_observations"]
    assert [line["ours_transitions"] for line in lines] == [2997, 3000]


OFFLINE_TINY = ["--updates", "20", "--rounds", "1", "--override", "data.batch_size=16"]
OFFLINE_TINY += ["--override", "algo.updates_per_step=10"]


def test_bench_offline_with_corl(tmp_path, data_dir):
    """`make bench`'s `--corl` (its `--compile` is test_bench_offline_compiled, slow), every algo."""
    lines = run_bench("bench_offline", "--corl", *OFFLINE_TINY, tmp_path=tmp_path, data_dir=data_dir)
    check(lines, ["offline_updates_per_s"] * 5)
    assert [line["algo"] for line in lines] == ["bc", "td3bc", "iql", "cql", "dt"]
    # the CORL-style reference for the algorithms benchmarks/corl_style.py writes out
    assert [line["algo"] for line in lines if "ratio_lightning_over_corl_style" in line] == [
        "bc",
        "td3bc",
        "iql",
    ]
    assert all(line["batch_size"] == 16 and line["updates"] == 20 for line in lines)


@pytest.mark.slow
def test_bench_offline_compiled(tmp_path, data_dir):
    lines = run_bench(
        "bench_offline", "--algos", "bc", "--compile", "--corl", *OFFLINE_TINY, tmp_path=tmp_path,
        data_dir=data_dir,
    )  # fmt: skip
    check(lines, ["offline_updates_per_s"])
    assert "ratio_compiled_over_plain" in lines[0] and "ratio_lightning_over_corl_style" in lines[0]


def test_bench_ppo(tmp_path, data_dir):
    # 2 iterations of 4 envs x 128 steps, the least it takes; one solve run of the same budget
    lines = run_bench(
        "bench_ppo", "--steps", "1024", "--rounds", "1", "--solve-steps", "1024", tmp_path=tmp_path,
        data_dir=data_dir,
    )  # fmt: skip
    check(
        lines,
        [
            "env_steps_per_s",
            "env_steps_per_cpu_s",
            "env_steps_per_s_vs_cleanrl_style",
            "env_steps_per_cpu_s_vs_cleanrl_style",
            "steps_to_solve",
        ],
    )
    # each reference is named: the same-iteration bare loop, then the CleanRL-style script
    assert [line["reference"] for line in lines[:4]] == [
        "same-iteration bare loop",
        "same-iteration bare loop",
        "CleanRL-style plain PPO script",
        "CleanRL-style plain PPO script",
    ]
    assert lines[0]["lightning_median"] == lines[2]["lightning_median"]  # the same Lightning runs


@pytest.mark.parametrize(
    "script, args, error",
    [
        ("bench_bc", ["--updates=50"], "--updates 50: needs at least 100 (2 × algo.updates_per_step)"),
        ("bench_ppo", ["--steps=1000"], "--steps 1000: needs at least 1024 (2 iterations of 512 env steps)"),
    ],
    ids=["bench_bc", "bench_ppo"],
)
def test_too_few_updates_for_a_figure_are_refused(script, args, error, tmp_path, data_dir):
    """train.py times from the end of its first step: with one step there is no figure to print (these
    crashed on None / 0 before)."""
    proc = run_module(f"benchmarks.{script}", *args, env=bench_env(tmp_path, data_dir))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == f"{script}.py: error: {error}"


def test_bench_online(tmp_path, data_dir):
    lines = run_bench(
        "bench_online", "--rounds", "1", "--sac-steps", "100", "--sac-learning-starts", "50",
        "--solve-steps", "300", "--solve-eval-every", "100", "--override", "algo.batch_size=16",
        tmp_path=tmp_path, data_dir=data_dir,
    )  # fmt: skip
    check(lines, ["sac_env_steps_per_s", "sac_env_steps_per_s_vs_cleanrl_style", "sac_steps_to_solve"])
    assert lines[2]["budget"] == 300 and lines[2]["eval_history"]


@pytest.mark.slow
@pytest.mark.parametrize("part, size", [("ddp", "--ddp-updates=100"), ("ddp_online", "--ppo-steps=2048")])
def test_bench_cluster_without_slurm(part, size, tmp_path, data_dir):
    """The parts that need no SLURM: BC and PPO on 1 process vs trainer=ddp on 2 (~30 s each)."""
    lines = run_bench("bench_cluster", "--only", part, size, tmp_path=tmp_path, data_dir=data_dir)
    check(lines, [part])


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
@pytest.mark.usefixtures("slurm")
def test_bench_cluster_sweep(tmp_path, data_dir):
    """cluster=slurm vs cluster=local, on the local SLURM (the fixture skips where it cannot be started,
    fails under CI)."""
    lines = run_bench(
        "bench_cluster", "--only", "sweep", "--jobs", "2", "--updates", "100", tmp_path=tmp_path,
        data_dir=data_dir,
    )  # fmt: skip
    assert "skipped" not in lines[0], lines[0]
    check(lines, ["sweep"])


# the longer comparisons (their runs are slow) and bench_cluster.py (its fast check: it starts)
HELP_ONLY_IN_FAST_TESTS = ["grpo_vs_ppo", "il_vs_bc", "td3bc_crosscheck", "bench_cluster"]


@pytest.mark.parametrize("script", HELP_ONLY_IN_FAST_TESTS)
def test_help(script):
    proc = run_module(f"benchmarks.{script}", "--help", timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stderr[-2000:]


def json_lines(stdout: str) -> list[dict]:
    """The comparison scripts print a markdown table after their JSON lines."""
    return [json.loads(text) for text in stdout.splitlines() if text.startswith("{")]


def finite(line: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(line[key], (int, float)) and math.isfinite(line[key]), (key, line[key])


@pytest.mark.slow
def test_grpo_vs_ppo_tiny(tmp_path, data_dir):
    """Four tiny runs; the figure and the doc section go to tmp_path (--docs), not docs/."""
    docs = tmp_path / "docs"
    proc = run_module(
        "benchmarks.grpo_vs_ppo", "--seeds", "0", "--cartpole-steps", "1024", "--pendulum-steps", "2048",
        "--grid-points", "2", "--runs", str(tmp_path / "runs"), "--docs", str(docs),
        env=bench_env(tmp_path, data_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json_lines(proc.stdout)
    assert [(line["env"], line["algo"]) for line in lines] == [
        ("CartPole-v1", "ppo"),
        ("CartPole-v1", "grpo"),
        ("Pendulum-v1", "ppo_continuous"),
        ("Pendulum-v1", "grpo"),
    ]
    for line in lines:
        finite(line, "eval_return_at_budget_mean", "eval_return_at_budget_std", "wall_seconds_mean")
    assert (docs / "grpo_vs_ppo.png").stat().st_size > 0
    assert "## GRPO vs PPO" in (docs / "online_rl.md").read_text()


@pytest.mark.slow
def test_il_vs_bc_tiny(tmp_path, data_dir):
    out = tmp_path / "out"
    proc = run_module(
        "benchmarks.il_vs_bc", "--seeds", "0", "--episodes", "1", "--bc-updates", "100",
        "--gail-steps", "1024", "--eval-episodes", "1", "--out", str(out),
        env=bench_env(tmp_path, data_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json_lines(proc.stdout)
    assert [line["algo"] for line in lines] == ["bc", "dagger", "gail"]
    for line in lines:
        finite(line, "eval_return_mean", "wall_seconds")
    assert "| algo | expert samples |" in proc.stdout


@pytest.mark.slow
def test_td3bc_crosscheck_tiny(tmp_path, data_dir):
    proc = run_module(
        "benchmarks.td3bc_crosscheck", "--data", "pendulum_mixed", "--env", "pendulum", "--seeds", "0",
        "--updates", "100", "--eval-every", "50", "--episodes", "1", "--out", str(tmp_path / "out"),
        env=bench_env(tmp_path, data_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json_lines(proc.stdout)
    assert [(line["impl"], line["updates"]) for line in lines] == [
        ("reference", 50),
        ("reference", 100),
        ("vla_hydra", 50),
        ("vla_hydra", 100),
    ]
    for line in lines:
        finite(line, "return_mean", "normalized")
