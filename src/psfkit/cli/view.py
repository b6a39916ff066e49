"""The `psfkit view` command (not written yet)."""
