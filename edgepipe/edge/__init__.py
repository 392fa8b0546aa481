"""The edge: the capture loop (source -> pre-transform -> encoder -> socket) and its service."""
