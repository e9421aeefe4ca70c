"""What every ``semidff`` command shares, and how a stage module's command runs on its own.

A stage module ``jobs/<stage>.py`` holds its recipe ``run(...)`` and the Typer command that wraps
it (options -> :func:`resolve_config` -> ``run`` -> the result printed), and ends with::

    if __name__ == "__main__":
        run_module(detect_command)          # python -m jobs.detect ... = semidff detect ...

``jobs/cli.py`` assembles those commands into the one ``semidff`` app with :func:`lazy_group`: a
stage module (and the torch / Ray it imports) is imported only when its command runs or its own
``--help`` is asked for, so ``semidff --help`` lists every command without importing any of them.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Union

import click
import typer
import typer.core

from semidff.config import Config, ConfigError, load_config

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}  # -h is --help on every command
CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file; omitted keys take the embedded defaults.")
OVERRIDES_ARGUMENT = typer.Argument(None, help="Dotted overrides, e.g. model.backbone.depth=50 video.key_interval=5.")


@contextlib.contextmanager
def exit_on(*errors: type[Exception], code: int = 2) -> Iterator[None]:
    """Turn ``errors`` raised inside into one ``error: <message>`` line on stderr and exit status
    ``code`` (2: bad input, config or arguments; 1: the work itself failed). Anything else, and
    typer's and click's own exits (RuntimeErrors, which a nested ``exit_on(RuntimeError)`` would
    otherwise catch), pass through."""
    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code) from None


def resolve_config(config: Union[Path, str, None], overrides: Optional[List[str]]) -> Config:
    """Load the config or exit with status 2 and a message naming every bad key."""
    with exit_on(ConfigError):
        return load_config(config, overrides or [])


def echo_progress(line: str) -> None:
    """A progress line: stderr, so that stdout holds only the result."""
    typer.echo(line, err=True)


def write_json_result(output: Optional[Path], text: str) -> None:
    """``-o FILE`` of the benchmarks: the result as JSON (folders created); nothing without ``-o``."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)


def command_line(ctx: typer.Context) -> str:
    """The command line that runs this command, as typed (``semidff benchmark decode --videos 2``,
    ``python -m jobs.benchmark_decode --videos 2``): recorded with a benchmark's result."""
    depth, parent = 0, ctx.parent
    while parent is not None:
        depth, parent = depth + 1, parent.parent
    return " ".join([ctx.command_path, *sys.argv[1 + depth:]])


# ---------------------------------------------------------------------------------------------
# Typer apps: the one `semidff` app (jobs/cli.py) and a stage module run on its own


def typer_app(**settings: Any) -> typer.Typer:
    """A Typer app with the settings every ``semidff`` app and sub-app shares."""
    settings.setdefault("context_settings", dict(CONTEXT_SETTINGS))
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, **settings)


def command_app(function: Callable[..., Any], name: Optional[str] = None) -> typer.Typer:
    """A Typer app whose one command is ``function`` (Typer runs it with no subcommand name)."""
    app = typer_app()
    app.command(name, context_settings=dict(CONTEXT_SETTINGS))(function)
    return app


def group_app(commands: Mapping[str, Callable[..., Any]], *, cls: Optional[type] = None, help: Optional[str] = None) -> typer.Typer:
    """A Typer app with one subcommand per ``commands`` item (name -> command function)."""
    app = typer_app(cls=cls, help=help, no_args_is_help=True)
    for name, function in commands.items():
        app.command(name, context_settings=dict(CONTEXT_SETTINGS))(function)
    return app


def run_module(command: Union[Callable[..., Any], typer.Typer]) -> None:
    """``python -m jobs.<stage>``: run the stage's command (or its group of commands, a Typer app)
    exactly as ``semidff <stage>`` runs it; exits with the command's status."""
    app = command if isinstance(command, typer.Typer) else command_app(command)
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    app(prog_name=f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name)


class DefaultCommandGroup(typer.core.TyperGroup):
    """A group whose first command runs when the first argument names none of its commands:
    ``semidff cache MANIFEST_DIR ...`` is ``semidff cache build MANIFEST_DIR ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and self.commands and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


@functools.lru_cache(maxsize=None)
def _function_docstrings(module: str) -> dict[str, str]:
    """The docstrings of ``module``'s top-level functions, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return {}
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return {node.name: ast.get_docstring(node) or "" for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


class LazyCommand(typer.core.TyperCommand):
    """A command of the ``semidff`` app given as ``"module:function"``: the module is imported when
    the command is parsed or run (or its own help printed); the app's command list shows the
    function's docstring, read from the source, so listing the commands imports none of them."""

    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, context_settings=dict(CONTEXT_SETTINGS))
        self.target = target
        self._loaded: Optional[typer.core.TyperCommand] = None

    @property
    def help(self) -> Optional[str]:  # what the command list shows (its first paragraph)
        if self._help is not None:
            return self._help
        module, _, function = self.target.partition(":")
        docstring = _function_docstrings(module).get(function)
        return docstring if docstring is not None else self.load().help

    @help.setter
    def help(self, value: Optional[str]) -> None:
        self._help = value

    def load(self) -> typer.core.TyperCommand:
        """The real Typer command: the stage module's function, built as ``python -m`` builds it."""
        if self._loaded is None:
            module, _, function = self.target.partition(":")
            self._loaded = typer.main.get_command(command_app(getattr(importlib.import_module(module), function), self.name))
        return self._loaded

    # Everything that parses, runs or describes the command is the real command's.
    def make_context(self, info_name: Optional[str], args: list[str], parent: Any = None, **extra: Any) -> Any:
        return self.load().make_context(info_name, args, parent=parent, **extra)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return self.load().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        return self.load().invoke(ctx)

    def get_params(self, ctx: Any) -> list[Any]:
        return self.load().get_params(ctx)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        return self.load().format_help(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        return self.load().shell_complete(ctx, incomplete)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        return self.load().main(*args, **kwargs)


def lazy_group(commands: Mapping[str, str], *, base: type = typer.core.TyperGroup, order: Sequence[str] = ()) -> type:
    """A Typer group class (``typer.Typer(cls=...)``) holding ``commands`` (name -> ``"module:function"``)
    as :class:`LazyCommand` s after the app's own sub-apps; listed in ``order``, then the rest."""

    class LazyGroup(base):  # type: ignore[misc, valid-type]
        def __init__(self, **settings: Any) -> None:
            super().__init__(**settings)
            for name, target in commands.items():
                self.add_command(LazyCommand(name, target))
            self.commands = {**{name: self.commands[name] for name in order if name in self.commands}, **self.commands}

    return LazyGroup
