"""The `ra` command line: global options and the error boundary.

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback);
1 a failure while working. `--debug` (anywhere on the line) shows the
traceback. Commands are registered from `racli.commands`; none of them
imports torch at start-up.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from racli.commands import bench, common, compare, data, db, experiment, gates, runs, sample, train
from racli.errors import BadInput, Interrupted, Stopped, first_line
from racli.text import terminal


def _say(msg: str) -> None:
    """One line on stderr, control characters made visible (messages quote user input)."""
    sys.stderr.write(f"ra: {terminal.one_line(msg)}\n")


class HelpWhenEmptyGroup(TyperGroup):
    """A group that, given no command, prints its help on stdout and stops with one
    error line (exit 2) instead of raising typer's internal no-arguments error."""

    def parse_args(self, ctx, args):
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            text = ctx.get_help()  # rich prints the help itself and returns ""
            if text:
                sys.stdout.write(text + "\n")
            raise BadInput(f"missing command (see '{ctx.command_path} --help')")
        return super().parse_args(ctx, args)


class RaGroup(HelpWhenEmptyGroup):
    """Typer group whose `main` is the error boundary (also under CliRunner)."""

    def invoke(self, ctx):
        # typer turns a KeyboardInterrupt into a silent exit 130: say it instead
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get("RA_DEBUG") == "1"
        argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
        try:
            rv = super().main(
                args=argv,
                prog_name=prog_name or "ra",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except BadInput as exc:
            if debug:
                traceback.print_exc()
            _say(f"error: {exc}")
            sys.exit(2)
        except Stopped as exc:
            if debug:
                traceback.print_exc()
            _say(f"stopped: {exc}")
            sys.exit(1)
        except (typer.Abort, KeyboardInterrupt, Interrupted) as exc:
            how = str(exc) if isinstance(exc, Interrupted) else ""
            _say(f"interrupted: {how}" if how else "interrupted")
            sys.exit(130)
        except typer.TyperException as exc:
            # typer's own errors; usage errors (bad option, missing value, ...) have exit code 2
            if debug:
                traceback.print_exc()
            ctx = getattr(exc, "ctx", None)
            usage = exc.exit_code == 2
            hint = f" (see '{ctx.command_path} --help')" if usage and ctx is not None else ""
            _say(f"error: {exc.format_message().strip()}{hint}")
            sys.exit(2 if usage else exc.exit_code)
        except Exception as exc:  # a failure while working
            if debug:
                traceback.print_exc()
            bad = _path_input_error(exc)
            if bad is not None:  # a path given that no file can have: bad input
                _say(f"error: {bad}")
                sys.exit(2)
            _say(
                f"failed: {type(exc).__name__}: {first_line(exc)} "
                "(rerun with --debug for the traceback)"
            )
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _path_input_error(exc: Exception) -> str | None:
    """The one line for an error that only a path given on the command line can cause (a
    name too long, a symbolic link loop, `~user` of no user), None for any other."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}".replace("\n", " ")
    if isinstance(exc, RuntimeError) and "home directory" in str(exc):
        return f"cannot expand a ~user path: {first_line(exc)}"
    return None


app = typer.Typer(
    cls=RaGroup,
    name="ra",
    help="ra: does an attention variant earn its place? Benchmark, train, compare, inspect gates.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from racli.provenance import version_line  # importlib.metadata: off the --help path

        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _root(
    db: Annotated[
        Optional[str],
        typer.Option(
            "--db",
            help="Results database: a path or SQLAlchemy URL (default: ra.yaml's db; env RA_DB).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Optional[str],
        typer.Option(
            "--config",
            help="Configuration file (default: ./ra.yaml, else the packaged defaults).",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=lambda v: _print_version(v),
            help="Print ra's version (and its source commit) and exit.",
        ),
    ] = False,
) -> None:
    common.GLOBAL.update(db=db, config=config)


def _register() -> None:
    """The commands, in the order `ra --help` lists them."""
    app.command("bench")(bench.bench)
    app.add_typer(runs.app, name="runs", cls=HelpWhenEmptyGroup)
    app.add_typer(db.app, name="db", cls=HelpWhenEmptyGroup)
    app.command("compare")(compare.compare)
    app.command("gates")(gates.gates)
    app.command("train")(train.train)
    app.command("sample")(sample.sample)
    app.add_typer(data.app, name="data", cls=HelpWhenEmptyGroup)
    app.command("experiment")(experiment.experiment)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
