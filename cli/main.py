"""The ``hpatk`` command line: a click group whose commands load lazily.

Built-in command modules import only click at the top, so ``hpatk --help`` stays fast;
plugins add their own commands through ``hpatk_register_commands``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click
from hpatk.core.errors import HpatkError
from hpatk.core.version import __version__

# command name -> "module:attribute"
BUILTIN_COMMANDS = {
    "plugins": "hpatk.cli.plugins:plugins",
    "registry": "hpatk.cli.plugins:registry",
    "data": "hpatk.cli.data:data",
    "enhance": "hpatk.cli.enhance:enhance",
    "cache": "hpatk.cli.cache:cache",
    "train": "hpatk.cli.train:train",
    "evaluate": "hpatk.cli.train:evaluate",
    "experiment": "hpatk.cli.train:experiment",
    "export": "hpatk.cli.export:export",
    "predict": "hpatk.cli.export:predict",
    "serve": "hpatk.cli.serve:serve",
    "demo": "hpatk.cli.demo:demo",
    "gan": "hpatk.cli.gan:gan",
}


class HpatkGroup(click.Group):
    """Loads built-in commands on demand and plugin commands once; turns
    :class:`HpatkError` into a one-line message and exit code 1."""

    _plugins_added = False

    def add_plugin_commands(self) -> None:
        """Add the plugins' commands (once per registry); a name a built-in command or
        an earlier plugin has is refused (``hpatk plugins`` says so)."""
        if self._plugins_added:
            return
        self._plugins_added = True
        from hpatk.core.registry import get_registry

        self.commands.clear()  # built-ins load from BUILTIN_COMMANDS: these are plugins'
        get_registry().add_commands(self, builtin=BUILTIN_COMMANDS)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_plugin_commands()
        return sorted({*BUILTIN_COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in BUILTIN_COMMANDS:
            module, attr = BUILTIN_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        self.add_plugin_commands()
        return self.commands.get(name)

    def invoke(self, ctx: click.Context) -> Any:
        args = getattr(ctx, "_protected_args", None)
        name = (args if args is not None else ctx.protected_args or [""])[:1]
        command = name[0] if name else ""
        _watch_ctrl_c()
        try:
            if command and command != "plugins":
                _warn_broken_plugins()
            return super().invoke(ctx)
        except HpatkError as exc:
            if getattr(exc, "already_reported", False):  # another rank printed it
                raise click.exceptions.Exit(1) from exc
            raise click.ClickException(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            global _interrupted
            _interrupted = True
            raise click.Abort() from None  # "Aborted!", exit 1, no traceback
        except Exception as exc:  # a bug or an unexpected failure: one line, details on demand
            if _interrupted:  # Ctrl-C caught inside a library (e.g. amid an import)
                raise click.Abort() from None
            if debug_enabled():
                raise
            raise click.ClickException(unexpected_error_line(exc, command)) from exc


_interrupted = False


def _on_ctrl_c(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _watch_ctrl_c() -> None:
    """Remember a Ctrl-C even when a library swallows its KeyboardInterrupt (an import
    interrupted half-way fails later with another error): the command still says
    "Aborted!". Only Python's default handler is replaced, in the main thread."""
    import signal
    import threading

    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _on_ctrl_c)


def debug_enabled() -> bool:
    """``--traceback`` or ``HPATK_DEBUG=1``: let unexpected exceptions show their traceback."""
    return os.environ.get("HPATK_DEBUG", "") not in ("", "0")


def unexpected_error_line(exc: BaseException, command: str = "") -> str:
    """One line for an exception no command turned into a message: an unwritable place
    or a full disk (any ``OSError`` naming its file), else the exception's first line."""
    from hpatk.core.errors import first_line
    from hpatk.core.io import is_writing_only_error, write_error

    if isinstance(exc, OSError) and exc.filename is not None:
        if is_writing_only_error(exc):
            return str(write_error(exc, exc.filename))
        return f"'{exc.filename}': {exc.strerror or exc}"
    first = first_line(exc) if str(exc).strip() else ""
    where = f" in 'hpatk {command}'" if command else ""
    return (f"{type(exc).__name__}{where}: {first} (rerun with --traceback or HPATK_DEBUG=1 "
            f"for details)")


def _warn_broken_plugins() -> None:
    """One stderr line per broken plugin (``HPATK_NO_PLUGIN_WARNINGS=1`` hides them)."""
    if os.environ.get("HPATK_NO_PLUGIN_WARNINGS", "") not in ("", "0"):
        return
    from hpatk.core.registry import get_registry

    for info in get_registry().plugins():
        if info.status == "broken":
            click.echo(f"hpatk: warning: plugin '{info.name}' is broken and not loaded "
                       f"({info.error}); 'hpatk plugins' for details, "
                       f"HPATK_NO_PLUGIN_WARNINGS=1 to hide this", err=True)


def _set_traceback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["HPATK_DEBUG"] = "1"


def _set_plugins_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:  # the option, or HPATK_PLUGINS_DIR through click's envvar
        from hpatk.core.registry import set_plugin_dirs

        set_plugin_dirs([p for p in value.split(os.pathsep) if p])
        if isinstance(ctx.command, HpatkGroup):
            ctx.command._plugins_added = False


@click.group(cls=HpatkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hpatk")
@click.option("--plugins-dir", type=click.Path(file_okay=False), is_eager=True,
              expose_value=False, callback=_set_plugins_dir, envvar="HPATK_PLUGINS_DIR",
              help="Also load every .py file in this folder as a plugin.")
@click.option("--traceback", is_flag=True, is_eager=True, expose_value=False,
              callback=_set_traceback,
              help="Show the full traceback of an unexpected error (or HPATK_DEBUG=1).")
def cli() -> None:
    """hpatk: protein localisation in multi-stain fluorescence microscopy.

    Contrast enhancement (HE, AHE, CLAHE), classic and DCGAN augmentation, transfer
    learning with focal loss, k-fold CV, macro/micro F1, an HDF5 cache, ONNX export and
    ONNX Runtime inference, all extensible through plugins.

    \b
    Example:
      hpatk data synth demo-data --n 200
      hpatk train --data demo-data --backbone resnet18 --epochs 2 --out run1
    """
    from hpatk.core.threads import configure_threads

    configure_threads()  # before any command imports torch: OpenMP reads its policy once


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. After a Ctrl-C (the command cleaned up and said
    "Aborted!"), the process ends at once: exit hooks that wait for interrupted worker
    pools' threads could otherwise hang it."""
    _watch_ctrl_c()
    try:
        cli.main(args=argv, prog_name="hpatk")
    except SystemExit as exc:
        if _interrupted:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
