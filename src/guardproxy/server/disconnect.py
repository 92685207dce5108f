"""The error `send` raises when the client has gone away.

A module of its own, outside the compiled build (setup.py): a class that subclasses a builtin
exception other than Exception, as OSError is, cannot be a native mypyc class.
"""


class ClientDisconnectedError(OSError):
    """Raised by `send` when the client has gone away (ASGI 2.4 asks for an OSError)."""
