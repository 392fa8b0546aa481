"""The server: the monitor (decode, account), its classify queue and worker (classify.py), its sinks, the
predictions file and its service."""
