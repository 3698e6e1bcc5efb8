"""Adapters that bring other frameworks' models under statetree's semantics.

Imported as ``statetree.adapters.equinox`` and ``statetree.adapters.dicts``. Adapters use
only statetree's public API, as any outside user would.
"""
