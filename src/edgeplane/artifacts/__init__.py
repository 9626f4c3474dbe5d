"""Artifacts: wasm modules and container images by content (sha256), from OCI registries."""
