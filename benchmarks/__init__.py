"""astream's benchmarks against its peers: ``nox -s bench`` or ``python -m benchmarks [NAME ...]``."""
