-- Every attempt of a webhook delivery, as the delivery log shows it: when, what the endpoint
-- answered (or why there was no answer), and how long it took. Written in the same statement
-- that records the delivery's outcome; goes with its delivery.
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
