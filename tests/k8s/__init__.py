"""Test infrastructure for the real Kubernetes control plane: building it, running it, installing
herald's CRDs and RBAC on it, and faults on cue in front of it (docs/testing.md)."""
