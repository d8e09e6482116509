"""guestfeed: the gRPC service behind a guest's event message feed."""

__version__ = "0.1.0"
