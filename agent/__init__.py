"""panostage: provisioning and USB staging agent (import name ``agent``)."""

__version__ = "0.1.0"
