"""Artifacts: wasm modules and container images by content (sha256), from OCI registries;
kept on disk by digest and delivered to workers over MQTT by the proxy, in binary chunks."""
