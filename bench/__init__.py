"""Benchmarks that print their figures: `python -m bench feed|propagation` (`make bench`).

Outside the service package: not installed with it. They use the service's
own code and its public test helpers (`guestfeed_server.testing`).
"""
