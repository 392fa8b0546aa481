"""The server: the monitor (decode, classify, account), its sinks and its service."""
