"""The standalone service: a host app of its own that mounts `inngest_gateway` as any host does."""
