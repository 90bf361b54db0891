"""The real-time path: Kafka events in, fresh top-K lists in Redis out."""
