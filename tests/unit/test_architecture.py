"""The import graph: no cycles, and the light modules never reach torch, e3nn or MACE."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_graph_has_floors_and_light_modules_stay_light():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycles" in result.stdout
