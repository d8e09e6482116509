"""The gRPC edge: servicers, conversions, the error map, interceptors, health."""
