"""Thin gRPC servicers: validate, authenticate/authorize, call the domain, map."""
