"""``hpatk plugins`` and ``hpatk registry``."""

from __future__ import annotations

import fnmatch
import json

import click
from hpatk.core.registry import KINDS, get_registry


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
def plugins(fmt: str) -> None:
    """List plugins: name, distribution, version, hooks, status.

    A plugin that failed to import is listed as broken, with its error; a plugin
    command whose name a built-in or another plugin's command has is refused, and
    listed here.

    \b
    Example:
      hpatk plugins --format json
    """
    root = click.get_current_context().find_root().command
    if hasattr(root, "add_plugin_commands"):  # commands are collected with the rest
        root.add_plugin_commands()
    infos = get_registry().plugins()
    if fmt == "json":
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [("NAME", "DIST", "VERSION", "STATUS", "HOOKS")]
    for i in infos:
        hooks = ",".join(h.removeprefix("hpatk_register_") for h in i.hooks)
        rows.append((i.name, i.dist or "-", i.version or "-", i.status, hooks or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    for i in infos:
        if i.status != "ok":
            click.echo(f"broken plugin '{i.name}': {i.error}", err=True)
        for line in i.refused:
            click.echo(line, err=True)


@click.command()
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def registry(kind: str, pattern: str | None, as_json: bool) -> None:
    """List what KIND has registered (enhancers, augmentations, backbones, losses).

    PATTERN filters names with a glob (or a substring).

    \b
    Example:
      hpatk registry backbones
      hpatk registry enhancers 'cla*'
    """
    entries = get_registry().catalog(kind).entries()
    if pattern:
        entries = [e for e in entries if fnmatch.fnmatch(e.name, pattern) or pattern in e.name]
    if as_json:
        click.echo(json.dumps([{"name": e.name, "aliases": list(e.aliases), "plugin": e.plugin,
                                "description": e.description} for e in entries], indent=2))
        return
    width = max([len(e.name) for e in entries] + [4])
    for e in entries:
        alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        click.echo(f"{e.name.ljust(width)}  {e.description}{alias}  [{e.plugin}]")
