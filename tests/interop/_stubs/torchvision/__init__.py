"""Stand-in for torchvision in the interop environment (see ../README.md)."""
