"""The errors a user can act on: each message names the setting or file at fault and the fix.

The entry points catch them and print one line instead of a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the fix."""


class SAEFileError(ValueError):
    """A saved SAE that cannot be loaded; the message names the file and what to do."""


class NoSpaceError(ConfigError):
    """Too little free disk for a write; the message gives both numbers and the setting that moves or shrinks it."""
