"""The `psfkit seq` command (not written yet)."""
