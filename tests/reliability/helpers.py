"""Helpers of the reliability suite: run the CLI, check the one-line Error/Hint contract, hash trees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from typer.testing import CliRunner

from fedctl.cli.app import app

runner = CliRunner()


def cli(*args, **kwargs):
    """Run `fedctl ARGS`; an exception that escapes the app fails the test (no catch_exceptions)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kwargs)


def assert_user_error(result, code: int = 1) -> str:
    """Exit `code`, exactly one `Error:` and one `Hint:` line on stderr, no traceback; returns the message."""
    text = result.output
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{text}"
    assert "Traceback" not in text, text
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    hints = [line for line in lines if line.startswith("Hint:")]
    assert len(errors) == 1 and len(hints) == 1, f"want one Error: and one Hint: line:\n{result.stderr}"
    return errors[0]


def assert_ok_or_user_error(result) -> None:
    """Damaged input may still be readable: then exit 0; otherwise the Error/Hint contract."""
    if result.exit_code != 0:
        assert_user_error(result, 1)


def tree_state(root: Path) -> dict[str, str]:
    """relative path → content hash (files), 'dir' (folders), 'link → target' (symlinks), for every entry."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = f"link → {os.readlink(path)}"
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state
