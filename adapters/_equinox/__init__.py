"""The Equinox adapter's machinery; the public door is ``statetree.adapters.equinox``
(see README.md here)."""
