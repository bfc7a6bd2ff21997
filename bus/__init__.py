"""The state bus (Redis Streams / Kafka / memory behind one interface) — issue 3."""
