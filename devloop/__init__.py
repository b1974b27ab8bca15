"""devloop: a fast, honest inner loop for Kubernetes development on a local kind cluster."""

__version__ = "0.1.0"
