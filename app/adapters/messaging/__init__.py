"""Getting committed outbox events onto Kafka."""
