"""Listeners: bind, accept, run the listener filters, pick the filter chain (listener.py)."""

from .listener import Listener, bind_hint, check_addresses_free

__all__ = ["Listener", "bind_hint", "check_addresses_free"]
