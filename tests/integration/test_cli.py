"""The CLI as a user meets it: exit codes and messages, never a traceback for a user's mistake."""
import subprocess
import sys
from pathlib import Path

import pytest

from aloop.cli import main

ROOT = Path(__file__).resolve().parents[2]


def aloop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "aloop.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("campaign", ["h3-exchange", "mos2-svac"])
def test_validate_the_shipped_campaigns(campaign, capsys):
    # in this process: the subprocess tests below cover the entry point, and torch is loaded here already
    assert main(["validate", str(ROOT / "campaigns" / campaign / "campaign.yaml")]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ("name: x\nmodel: {path: missing.model}\npool: {sources: []}\nlabeler: {kind: pyscf}\nstop: {max_labels: 5}\n",
     "model.path: file not found"),
    ("name: x\n  bad indent: [\n", "YAML syntax error"),
])
def test_bad_campaign_exits_1_with_the_field_and_no_traceback(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in ("validate", "run"):
        result = aloop(command, path)
        assert result.returncode == 1
        assert expected in result.stderr and "bad.yaml" in result.stderr
        assert "Traceback" not in result.stderr


def test_status_report_export_on_a_folder_that_is_no_run(tmp_path):
    for command in ("status", "report", "export"):
        result = aloop(command, tmp_path / "nothing")
        assert result.returncode == 1
        assert "not" in result.stderr and "run" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nothing").exists()  # a typo never creates an empty run


def test_a_mistake_in_the_input_is_refused_before_torch_is_loaded(tmp_path):
    # importing torch and MACE takes seconds to tens of seconds on a busy machine: a typo should not wait for it
    (tmp_path / "bad.yaml").write_text("name: x\n  bad indent: [\n")
    code = ("import sys; from aloop.cli import main; "
            "codes = [main(['validate', 'bad.yaml']), main(['run', 'bad.yaml']), main(['status', 'nothing']), "
            "main(['report', 'nothing']), main(['export', 'nothing'])]; "
            "print(codes, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.stdout.split("\n")[-2] == "[1, 1, 1, 1, 1] False", result.stdout + result.stderr


def test_a_fit_that_does_not_converge_is_an_error_not_a_traceback(monkeypatch, capsys):
    """`finetune.readout: full` at a prior too weak for L-BFGS to settle raises NotConverged; the user
    sees the fit's message and what to change, exit status 1."""
    from aloop import cli
    from aloop.committee import NotConverged

    def stuck(args):
        raise NotConverged("committee fit (readout full): member 0: L-BFGS stopped after 2000 steps")
    monkeypatch.setattr(cli, "cmd_validate", stuck)
    assert main(["validate", "campaign.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: committee fit (readout full): member 0") and "run the same command" in err

    def broken(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli, "cmd_validate", broken)
    with pytest.raises(RuntimeError, match="a bug"):   # a bug is not dressed up as a user's mistake
        main(["validate", "campaign.yaml"])
