"""Applications: OTP-secured trio streams, chat and file transfer.

A stream between two spokes is a ``trio.abc.HalfCloseableStream``, opened and
served like TCP::

    from qkdnet.apps.api import open_secure_stream, serve_secure
    from qkdnet.apps.local import NodeClient

    node = NodeClient("/home/me/.qkdnet/node.sock")      # or an in-process SpokeNode
    stream = await open_secure_stream("bob", "chat", node=node)
    await stream.send_all(b"hello")                      # padded + tagged on every hop
    await nursery.start(serve_secure, handler, "chat", node=node)

``examples/chat_client.py`` is a complete chat client in about 20 lines (tested
against ``qkdnet chat`` in tests/apps/test_apps_cli.py). Modules: ``stream``
(SecureStream and its sans-I/O cores), ``keys`` (key sources), ``api``
(``open_secure_stream``/``serve_secure``), ``local`` (the node daemon's Unix
socket), ``chat``, ``transfer``, ``demo`` and ``cli``; the frames are in ``wire``
and specified in spec/apps.md.
"""
