"""Alert webhooks: subscriptions, a durable outbox, signed deliveries (Standard Webhooks)."""
