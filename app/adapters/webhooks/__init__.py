"""Webhook delivery's outside world: the Kafka consumer group that reads events, the HTTP
client that POSTs signed deliveries, and the DNS checks that keep it off internal
addresses (docs/webhooks.md)."""
