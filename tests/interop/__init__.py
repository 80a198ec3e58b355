"""Interop beyond the Python clients: go-spiffe test binaries, herald and SPIRE as processes."""
