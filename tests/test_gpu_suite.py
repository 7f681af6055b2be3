"""The CPU dry run of experiments/gpu_suite.sh completes and writes its summary (so the GPU script cannot rot)."""
import os
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_suite_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_suite.sh"), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "FAIL" not in summary, summary
    for name in ("pytest_gpu", "throughput_digits", "solver_overhead", "cli_train", "cli_likelihood"):
        assert f"| {name} | pass |" in summary
    assert "bits/dim" in summary
    with tarfile.open(tmp_path / "raw.tar.gz") as t:
        assert any(n.endswith("likelihood.json") for n in t.getnames())
