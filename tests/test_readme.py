import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_reference_is_current():
    ref = _module()
    assert ref.readme_table((ROOT / "README.md").read_text()) == ref.table(), (
        "README's configuration table is stale: run python scripts/config_reference.py --write"
    )


def test_readme_states_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo" in readme and "bash scripts/test" in readme
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()
