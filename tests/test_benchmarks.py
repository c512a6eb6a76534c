"""The benchmark scripts run, end to end, at toy sizes (their figures are checked, not their timings).

The scripts are how every speed claim is rerun, and one that no longer runs with the current solver
options hides that until someone reruns it (solver_choices.py briefly did: its jit lacked a new static
option of solve_layers). These take their sizes as arguments, so they run here at toy ones, on the CPU;
solver_choices.py's workloads are fixed at benchmark sizes and are not run here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import _tolerance as T
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TOY = ["--layers", "2", "--features", "16", "--train", "200", "--test", "60", "--repeats", "1"]


def toy_data(on_device: bool):
    """The scripts' own training data at TOY sizes (float32 X (2, 200, 16), y): numpy's draw for
    cpu_sweep.py, JAX's for gpu_sweep.py."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from synthetic import make_layers, make_layers_on_device
    finally:
        sys.path.remove(str(BENCHMARKS))
    X, y = (make_layers_on_device if on_device else make_layers)(2, 260, 16)
    return np.asarray(X)[:, :200], np.asarray(y)[:200]


def logistic_gap_bound(X, y, tol):
    """Worst relative objective gap (over layers, C = 1) a solve stopped at ``tol`` can leave: the float32
    region's gap over the optimum's objective (T.glm_region; X is float32 data)."""
    return max(r.gap / r.objective for r in (T.glm_region(x, y, 1.0, tol=tol, data=False) for x in X))


def ridge_error_bound(X, targets, alphas):
    """Worst relative coefficient error (over layers and alphas) of a float32 ridge solve (T.ridge_region)."""
    return max(float(r.radius[0] / np.linalg.norm(r.coef[0]))
               for r in (T.ridge_region(x, targets, a, data=False) for x in X for a in alphas))


def run_script(name: str, *args: str) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def table_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("| ") and not line.startswith("| workload")]


def worst(pattern: str, output: str) -> float:
    values = [float(v) for v in re.findall(pattern, output)]
    assert values, f"no {pattern!r} in the output"
    return max(values)


def test_gpu_sweep_runs_on_the_cpu_and_reports_exact_fits():
    out = run_script("gpu_sweep.py", *TOY, "--sklearn-layers", "1", "--only", "logistic", "ridge",
                     "--studies", "refresh")
    rows = table_rows(out)
    assert len(rows) == 2 + 7 + 2 + 4  # C=1 at two tols, the study, the two anchors, ridge (two methods, LOO, eigh)
    assert "passes over X" in out and "time / floor" in out  # the memory floor of the solve's passes
    ours = [r for r in rows if r.startswith(("| logistic C=1, tol=1e-07", "| study:"))]
    assert all("all converged True" in r for r in ours)
    X, y = toy_data(on_device=True)
    assert worst(r"obj gap (-?[0-9.e+-]+)", "\n".join(ours)) <= logistic_gap_bound(X, y, 1e-7)
    assert worst(r"coef err vs float64 closed form ([0-9.e+-]+)", out) <= ridge_error_bound(
        X, y.astype(np.float64), np.logspace(-1, 4, 8))


@pytest.mark.parametrize("only", ["logistic", "ridge", "ridge-classifier"])
def test_cpu_sweep_runs_and_reports_exact_fits(only):
    out = run_script("cpu_sweep.py", *TOY, "--only", only)
    rows = table_rows(out)
    assert rows
    X, y = toy_data(on_device=False)
    if only == "logistic":
        assert all("all converged True" in r for r in rows)
        assert worst(r"max obj gap (-?[0-9.e+-]+) vs", out) <= logistic_gap_bound(X, y, 1e-4)  # the tol 1e-4 row included
    else:
        # at the alpha scikit-learn's leave-one-out picks, one of these 16
        targets = 2.0 * y - 1 if only == "ridge-classifier" else y.astype(np.float64)
        assert worst(r"max coef err vs float64 closed form ([0-9.e+-]+)", out) <= ridge_error_bound(
            X, targets, np.logspace(-2, 4, 16))


def test_regime_panel_runs_and_reports_every_workload():
    """The regime panel at a twentieth of its sizes: every workload gives a row, ours never worse in
    objective than scikit-learn's default fit (the panel's exactness claim)."""
    out = run_script("regimes.py", "--regimes", "clear", "raw", "softmax-10", "--scale", "0.05", "--rounds", "1",
                     "--workloads", "c1", "same-tol", "path", "cv")
    rows = table_rows(out)
    workloads = [row.split("|")[2].strip() for row in rows]
    assert {"C=1, defaults", "C=1, both tol 1e-4", "8-C path, defaults",
            "CV 5 folds x 8 C + refit"} <= set(workloads)
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        if cells[2] == "C=1, both tol 1e-4":  # stopped where a Newton step predicted a gap <= 1e-4; the gap
            assert float(cells[6]) <= 2e-4, row  # is within twice that near the optimum (self-concordance)
        if cells[2] in ("C=1, defaults", "8-C path, defaults"):
            assert float(cells[6]) <= max(float(cells[7]), 1e-6), row  # gap ours <= gap sklearn


def test_regime_policies_reports_every_variant_against_the_default():
    """Two policies interleaved at a twentieth of the sizes: a row per workload and policy (a softmax regime:
    C = 1 only), all converged; a field SolverPolicy does not have is refused by name."""
    out = run_script("regime_policies.py", "quasi_newton_memory=0", "--regimes", "clear", "softmax-10", "--scale",
                     "0.05", "--rounds", "1")
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table_rows(out)[1:]]
    policies = ("default", "quasi_newton_memory=0")
    assert {(r[0], r[1], r[2]) for r in rows} == ({("clear", w, p) for w in ("c1", "path") for p in policies}
                                                  | {("softmax-10", "c1", p) for p in policies})
    assert all(r[6] == "True" and float(r[5]) > 0 for r in rows), out
    assert all(r[4] == "1.000" for r in rows if r[2] == "default"), out
    done = subprocess.run([sys.executable, str(BENCHMARKS / "regime_policies.py"), "not_a_field=1"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0 and "'not_a_field' is not a SolverPolicy field" in done.stderr


def test_row_passes_counts_the_streamed_solvers_passes():
    """The out-of-core solver's passes at a twentieth of the sizes: a count per workload, all converged."""
    out = run_script("row_passes.py", "--regimes", "clear", "--layers", "1", "--row-block", "64", "--scale", "0.05")
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table_rows(out)[1:]]
    assert [r[0] for r in rows] == ["clear"], out
    assert all(int(v) > 0 for v in rows[0][1:4]) and float(rows[0][4]) <= 1e-6 and rows[0][5] == "True", out


def test_rounded_hessian_times_each_form():
    """The Hessian product's forms on a small layer: a row each, float32's ratio to itself 1.00x."""
    out = run_script("rounded_hessian.py", "--classes", "5", "--rows", "64", "--features", "16",
                     "--repeats", "1")
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table_rows(out)[1:]]
    forms = ["float32", "bfloat16, X as it lies", "bfloat16, X^T and X (the solver's)"]
    assert [r[1] for r in rows] == forms, out
    assert rows[0][4] == "1.00x" and all(float(r[2]) >= 0 and float(r[4][:-1]) > 0 for r in rows), out


def test_softmax_memory_compares_what_a_solve_holds_with_its_plan():
    """A fit's and a CV's row on small layers: the plan the streaming wrapper makes for the same call."""
    for extra in ([], ["--folds", "3"]):
        out = run_script("softmax_memory.py", "--cases", "300x32x20", *extra)
        rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table_rows(out)[1:]]
        assert [r[0] for r in rows] == ["300x32x20"], out
        assert float(rows[0][3].split()[0]) > float(rows[0][1].split()[0]) > 0, out  # plan above one layer
        assert float(rows[0][4]) >= 0, out


def test_regime_passes_reports_counts_and_gaps():
    """The pass counts per regime at a twentieth of the sizes: a count and a gap per workload, converged."""
    out = run_script("regime_passes.py", "--regimes", "clear", "softmax-10", "--scale", "0.05")
    assert re.search(r"clear: C=1: [\d.]+ passes a layer, worst gap [-\d.e+]+, converged True; 8-C path: ", out), out
    assert re.search(r"softmax-10 .*C=1: \d+ passes, gap [-\d.e+]+, converged True", out), out
    assert worst(r"gap ([-\d.e+]+)", out) <= 1e-6


def test_prediction_memory_reports_every_call_dtype_and_input():
    """Scores and projections of 2 x 4096 x 256 layers (4 MB a float32 layer): a row per call, storage dtype
    and input kind; half precision converted a layer at a time (temporaries within one float32 layer, as
    memory_analysis reports them), a float32 X scored in place."""
    out = run_script("prediction_memory.py", "--shape", "2x4096x256", "--repeats", "1")
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table_rows(out)[1:]]
    assert {(r[0], r[1], r[2]) for r in rows} == {
        (call, dtype, kind) for call in ("decision_function", "pca_project")
        for dtype in ("float32", "bfloat16", "float16") for kind in ("numpy", "jax")}, out
    layer_mb = 4096 * 256 * 4 / 2**20
    assert all(float(r[3]) == (2 if r[1] == "float32" else 1) * layer_mb for r in rows), out
    assert all(float(r[4]) <= layer_mb + 0.5 for r in rows), out
    assert all(float(r[4]) == 0 for r in rows if r[0] == "decision_function" and r[1] == "float32"), out


def test_commits_compares_two_trees_in_alternating_processes():
    """One tree against itself at a twentieth of the sizes: a row per regime and workload, the same solver
    iterations on both sides (the same code), each side's library imported from its tree."""
    root = str(BENCHMARKS.parent)
    out = run_script("commits.py", "--trees", root, root, "--regimes", "clear", "--scale", "0.05", "--rounds", "1",
                     "--repeats", "1")
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table_rows(out)[1:]]
    assert [(r[0], r[1]) for r in rows] == [("clear", "c1"), ("clear", "path")], out
    for r in rows:
        first, second = r[6].split(" / ")
        assert first == second and int(first) > 0, out
    done = subprocess.run([sys.executable, str(BENCHMARKS / "commits.py"), "--trees", root, str(BENCHMARKS)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0 and "is not a checkout of lmprobe-jax" in done.stderr
