"""What a client may cost the server before it is authenticated, and how the server stops.

Connections are capped (the oldest one not serving a request makes room), compressed
bodies are refused unread, idle and slow connections are closed after a bound.
"""

from .limits import BoundedRunner, ConnectionLimiter, refuse_encoded_bodies

__all__ = ["BoundedRunner", "ConnectionLimiter", "refuse_encoded_bodies"]
