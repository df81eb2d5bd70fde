import subprocess
import sys

import pytest

from wsnodule_core import __version__
from wsnodule_core.cli.main import main
from wsnodule_core.cli.planned import NOT_YET_EXIT_CODE

SUBCOMMANDS = ("demo", "data", "train", "segment", "evaluate")


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


@pytest.mark.parametrize("name", ["train", "segment", "evaluate"])
def test_planned_subcommands_say_what_they_will_do_and_exit_non_zero(name, capsys):
    assert main([name]) == NOT_YET_EXIT_CODE
    err = capsys.readouterr().err
    assert "not available in this version yet" in err and "It will" in err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "wsnodule_core.cli.main", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout
