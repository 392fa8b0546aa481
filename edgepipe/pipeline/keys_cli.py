"""`edgepipe keys`: CURVE key pairs for the data and control sockets."""
from __future__ import annotations

import click

from edgepipe.errors import EdgepipeError


@click.group()
def keys() -> None:
    """CURVE key pairs: capture is the server, monitors are clients (see docs/deploy.md)."""


@keys.command("generate")
@click.argument("names", nargs=-1, required=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for NAME.key (public, 0644) and NAME.key_secret (secret, 0600).")
@click.option("--force", is_flag=True, help="Replace existing key files.")
def generate(names: tuple[str, ...], directory: str, force: bool) -> None:
    """Write a key pair for each NAME, e.g. `edgepipe keys generate capture monitor`.

    Give the capture NAME.key_secret of its own pair and the monitors' NAME.key files (its
    allow-list); give each monitor its own NAME.key_secret and the capture's NAME.key.
    """
    from edgepipe.pipeline.security import write_keypair

    for name in names:
        try:
            pub, sec, public = write_keypair(directory, name, force)
        except OSError as exc:
            raise click.ClickException(f"cannot write keys for {name} in {directory}: {exc.strerror}") from None
        except EdgepipeError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{name}: public {pub}  secret {sec}  (public key z85:{public.decode()})")


@keys.command("show")
@click.argument("spec")
def show(spec: str) -> None:
    """Print the public key of a key file (public or secret) as z85:KEY, for allow-lists."""
    from edgepipe.pipeline.security import load_public_key

    try:
        click.echo(f"z85:{load_public_key(spec).decode()}")
    except EdgepipeError as exc:
        raise click.ClickException(str(exc)) from None
