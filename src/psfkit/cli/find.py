"""The `psfkit find` command (not written yet)."""
