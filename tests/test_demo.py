"""The README's main command: `sidecar demo` builds real models, serves them, sends traffic, shows the dashboard."""

import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "demo",
            "--workdir",
            str(tmp_path),
            "--requests",
            "300",
            "--concurrency",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "built cancer 2.0.0" in out and "built cancer 2.1.0" in out
    assert "served 300/300 requests (0 errors)" in out
    assert "Model Performance Dashboard - cancer v2.1.0" in out
    assert "Accuracy: " in out and "Latency: 95% < " in out
    # Drift phase: the alerts fire on exactly the two shifted features, then clear.
    both = "['mean texture', 'worst texture']"
    assert f"input features alerting: {both} (shifted: {both})" in out
    assert "after: 0 active alert(s)" in out and "ALERT cancer 2.1.0 worst texture psi=" in out
    assert (tmp_path / "models" / "cancer" / "2.1.0" / "model.json").exists()
