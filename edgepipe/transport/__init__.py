"""The wire: message protocol (header), ZeroMQ sockets, the keyframe back channel and CURVE security."""
