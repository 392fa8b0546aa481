"""Networks shared by the runtime engines and training: the ED pre-transform (ed.py)."""
