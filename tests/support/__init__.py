"""Real components for tests and the demo: a SeaweedFS S3 server and a fault-injecting proxy."""
