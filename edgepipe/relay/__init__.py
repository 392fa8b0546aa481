"""The relay (`edgepipe relay`): many captures in, many monitors out, through ZeroMQ's own proxy (proxy.py),
counted on the side by a tap (tap.py), served as a service (service.py) with metrics (metrics.py)."""
