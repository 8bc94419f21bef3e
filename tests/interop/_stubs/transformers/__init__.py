"""Stand-in for transformers in the interop environment (see ../README.md)."""
