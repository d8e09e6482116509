"""Benchmarks (`guestfeed bench ...`) and the process helpers they share with tests."""
