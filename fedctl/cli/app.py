"""The `fedctl` command: wires the groups and turns FedctlError into `Error:` / `Hint:` + exit 1."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Annotated

import typer
from typer.core import TyperGroup

# Offline by default: nothing may download at run time (set HF_HUB_OFFLINE=0 to allow the hub).
# Library chatter (kernel fallbacks, shard progress bars) would drown the round table.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                     ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)

from fedctl import __version__  # noqa: E402
from fedctl.errors import FedctlError  # noqa: E402


class _FedctlGroup(TyperGroup):
    """Root group: every error a user can cause is printed as `Error:` / `Hint:` on stderr, no traceback
    (`FEDCTL_DEBUG=1` shows it). FedctlError and OSError (full disk, no permission, read-only disk) exit 1;
    argument-parser usage errors (unknown option, bad value, missing option) keep click's exit code 2, the
    POSIX convention that tells "you called it wrong" from "it ran and failed"."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = [info_name or "fedctl", *args]
        with _user_errors():  # options of `fedctl` itself (e.g. `fedctl --bogus`)
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["fedctl.argv"] = argv  # the exact command line, for the run record
        return ctx

    def invoke(self, ctx):
        with _run_record(ctx.meta.get("fedctl.argv") or ["fedctl"]), _user_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _run_record(argv: list[str]):
    """The run record (run.log + meta.json, fedctl/utils/record.py) of this command: everything the consoles
    print is copied into it; the folders the command writes attach themselves; the exit status closes it."""
    import click

    from fedctl.cli.console import copy_to, stop_copy
    from fedctl.utils import record

    rec = record.begin(argv)
    hooks = copy_to(rec.write)
    status = 1
    try:
        yield
        status = 0
    except click.exceptions.Exit as exc:
        status = exc.exit_code
        raise
    except KeyboardInterrupt:
        status = 130
        raise
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
        raise
    finally:
        stop_copy(hooks)
        record.end(status)


@contextlib.contextmanager
def _user_errors():
    import click

    try:
        yield
    except FedctlError as exc:
        if os.environ.get("FEDCTL_DEBUG"):
            raise
        report_error(exc)
        raise typer.Exit(1) from None
    except click.exceptions.NoArgsIsHelpError:
        raise  # `fedctl data` alone: click prints the group's help
    except click.ClickException as exc:
        if os.environ.get("FEDCTL_DEBUG"):
            raise
        report_error(_usage_error(exc))
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if os.environ.get("FEDCTL_DEBUG") or exc.errno == errno.EPIPE:
            raise
        from fedctl.utils.io import os_error

        report_error(os_error(exc, doing="read or write"))
        raise typer.Exit(1) from None


def _usage_error(exc) -> FedctlError:
    """click's usage message on one line, and where to find the valid options."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "fedctl"
    return FedctlError(message, f"see `{command} --help` for the options and their values")


app = typer.Typer(
    cls=_FedctlGroup,
    name="fedctl",
    help="Federated-learning research toolkit for speech and language models.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish (Typer's own)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"fedctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Federated-learning research toolkit for speech and language models."""


def _register_groups() -> None:
    # A group appears only when it works: each module is added once it exists.
    import importlib

    for name in ("data", "train", "merge", "attack", "inspect"):
        try:
            module = importlib.import_module(f"fedctl.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fedctl.cli.{name}":
                continue
            raise
        app.add_typer(module.app, name=name)
    # single commands: `fedctl eval TARGET`
    from fedctl.cli import eval as eval_cli

    app.command("eval", epilog=eval_cli.EPILOG)(eval_cli.command)
    from fedctl.cli import sweep as sweep_cli

    app.command("sweep", cls=sweep_cli.Command, epilog=sweep_cli.EPILOG)(sweep_cli.command)


_register_groups()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="fedctl")  # also under `python -m fedctl`: completion scripts name the command


def report_error(exc: FedctlError) -> None:
    from rich.markup import escape

    from fedctl.cli.console import err

    # messages quote user input and paths ("fedctl[flower]", "[round 3]"): never read them as markup
    err.print(f"[bold red]Error:[/] {escape(exc.message)}", highlight=False)
    if exc.hint:
        err.print(f"[bold]Hint:[/] {escape(exc.hint)}", highlight=False)


if __name__ == "__main__":
    main()
