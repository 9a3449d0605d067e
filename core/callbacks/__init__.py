"""Status-change callbacks: a transactional outbox, HMAC-signed deliveries, retries with backoff."""
