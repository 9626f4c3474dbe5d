"""Artifacts: content-addressed blobs (wasm modules, later OCI layers), stored on disk,
cut into binary chunks and delivered to workers over MQTT by the proxy."""
