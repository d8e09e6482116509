"""The shared kernel: the feed's types and the errors every layer speaks.

Nothing here knows gRPC, asyncpg or HTTP; every other package may import it.
"""
