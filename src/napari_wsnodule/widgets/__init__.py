"""Dock widgets of the plugin, one module each; :mod:`._base` holds what they share."""
