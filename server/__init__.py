"""The chat server package; ``server.protocol`` is shared with the client.

Deliberately free of imports: the frozen client pulls in
``server.protocol`` and must not drag the rest of the server with it.
"""
