"""The `crossrec` console command.

Each sub-command lives in its own module under ``crossrec.commands`` and exposes
``register(app)``; this file only discovers them, so adding a command never means editing a
shared file. Command modules import heavy libraries (Spark, torch, Feast) inside the command
function, which keeps ``crossrec --help`` fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import crossrec.commands as commands_pkg

app = typer.Typer(
    name="crossrec",
    help="Cross-domain recommendations: nightly batch pipeline, streaming updates, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)


def _register_commands() -> None:
    for module_info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands_pkg.__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
