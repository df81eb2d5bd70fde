import subprocess
import sys

import pytest

from wsnodule_core import __version__
from wsnodule_core.cli.main import main

SUBCOMMANDS = ("demo", "data", "train", "segment", "export", "evaluate", "models")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("name, needs", [("train", "--out"), ("segment", "--checkpoint"),
                                         ("evaluate", "--checkpoint")])
def test_model_subcommands_describe_their_options(name, needs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert needs in capsys.readouterr().out


@pytest.mark.parametrize("argv, needs", [(["segment", "ct.nii.gz"], "--output"), (["evaluate", "data"], "--checkpoint")])
def test_model_subcommands_without_a_required_option_fail_with_usage(argv, needs, capsys):
    """segment's --checkpoint is optional (a shipped model segments without one); --output is not."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert needs in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "wsnodule_core.cli.main", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["data", "phantom", "--help"],
                                  ["segment", "--help"], ["export", "--help"], ["models"]])
def test_help_does_not_load_torch_or_the_imaging_stack(argv):
    """Help comes in well under a second: torch, scipy and highdicom load only when a command runs."""
    code = ("import sys\nfrom wsnodule_core.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'scipy', 'highdicom', 'SimpleITK') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
