"""The `psfkit compare` command (not written yet)."""
