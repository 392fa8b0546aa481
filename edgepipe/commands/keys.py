"""`edgepipe keys`: CURVE key pairs for the data and control sockets."""
from __future__ import annotations

import click

from edgepipe.core.errors import EdgepipeError


@click.group()
def keys() -> None:
    """CURVE key pairs: capture is the server, monitors are clients (see docs/deploy.md)."""


@keys.command("generate")
@click.argument("names", nargs=-1, required=True)
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for NAME.key (public, 0644) and NAME.key_secret (secret, 0600); created 0700.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
def generate(names: tuple[str, ...], directory: str, force: bool) -> None:
    """Write a key pair for each NAME, e.g. `edgepipe keys generate capture monitor`.

    Give the capture NAME.key_secret of its own pair and the monitors' NAME.key files (its
    allow-list); give each monitor its own NAME.key_secret and the capture's NAME.key.

    A z85:KEY string contains shell characters ($ & < > * ? and more): quote it in single quotes,
    e.g. --allow 'z85:KEY'.
    """
    from edgepipe.transport.security import write_keypair

    for name in names:
        try:
            pub, sec, public = write_keypair(directory, name, force)
        except OSError as exc:
            raise click.ClickException(f"cannot write keys for {name} in {directory}: {exc.strerror}") from None
        except EdgepipeError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{name}: public {pub}  secret {sec}  (public key, quoted for a shell: 'z85:{public.decode()}')")


@keys.command("show")
@click.argument("spec")
def show(spec: str) -> None:
    """Print the public key of a key file (public or secret) as z85:KEY, for allow-lists.

    Z85 uses shell characters ($ & < > * ? and more): on a command line, quote the key in single
    quotes ('z85:KEY'), or use "$(edgepipe keys show FILE)". In a TOML file write it as it is printed."""
    from edgepipe.transport.security import load_public_key

    try:
        key = load_public_key(spec).decode()
        click.echo(f"z85:{key}")  # stdout stays the bare key, for scripts
        click.echo(f"(on a command line, quote it: 'z85:{key}')", err=True)
    except EdgepipeError as exc:
        raise click.ClickException(str(exc)) from None
