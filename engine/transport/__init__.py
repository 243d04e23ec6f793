"""How batches and control elements move between subtasks: in-process, or over pipes.

See :mod:`onceflow.engine.transport.base` for the seam a transport implements.
"""

from onceflow.engine.transport.base import ChannelEnd, ChannelId, Transport
from onceflow.engine.transport.local import LocalChannel, LocalTransport

__all__ = ["ChannelEnd", "ChannelId", "LocalChannel", "LocalTransport", "Transport"]
