"""One module per command: click flags in, one library call out (see edgepipe/cli.py)."""
