-- Messages both ways. An outgoing message is stored `queued` before the API answers 202;
-- its WhatsApp id (`wa_id`) is chosen here, before the send, so a crash between send and
-- status update re-sends under the same id and WhatsApp drops the duplicate.
-- `session_id` is not a foreign key: history outlives a deleted session unless purged.
CREATE TABLE messages (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_id UUID NOT NULL,
    wa_id TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    -- The other party, E.164 (`+15551234567`).
    chat TEXT NOT NULL,
    -- The session's own number when the message was stored (`from` of an outgoing message,
    -- `to` of a received one).
    own_phone TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN (
        'text', 'image', 'video', 'audio', 'document', 'location', 'contact', 'reaction', 'other')),
    -- The typed content (text, location, contact card, reaction, media metadata).
    body JSONB NOT NULL,
    text TEXT,
    quoted_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed', 'received')),
    error TEXT,
    idempotency_key TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Redeliveries of one inbound message (offline queue, reconnects) are stored once.
CREATE UNIQUE INDEX messages_wa_id_idx ON messages (session_id, direction, wa_id);
CREATE UNIQUE INDEX messages_idempotency_idx ON messages (session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_chat_idx ON messages (session_id, chat, created_at DESC, id DESC);
CREATE INDEX messages_session_idx ON messages (session_id, created_at DESC, id DESC);
-- The send queue: what each session still has to send, oldest first.
CREATE INDEX messages_queued_idx ON messages (session_id, created_at, id) WHERE status = 'queued';
CREATE INDEX messages_tenant_queued_idx ON messages (tenant_id) WHERE status = 'queued';

-- One row per conversation of a session: last message, unread count, and the per-chat
-- settings (auto-reply bot on or off, the contact's name).
CREATE TABLE chats (
    session_id UUID NOT NULL,
    chat TEXT NOT NULL,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    contact_name TEXT,
    last_message_id UUID,
    last_message_at TIMESTAMPTZ,
    unread_count INTEGER NOT NULL DEFAULT 0,
    messages_in BIGINT NOT NULL DEFAULT 0,
    messages_out BIGINT NOT NULL DEFAULT 0,
    bot_enabled BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, chat)
);
CREATE INDEX chats_recent_idx ON chats (session_id, last_message_at DESC, chat);

-- A tenant may send slower (or faster) than its tier's default.
ALTER TABLE tenants ADD COLUMN send_rate_per_minute INTEGER
    CHECK (send_rate_per_minute IS NULL OR send_rate_per_minute BETWEEN 1 AND 6000);

-- Webhook subscriptions: a tenant's (session_id NULL) or one session's.
CREATE TABLE webhooks (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_id UUID,
    url TEXT NOT NULL,
    -- Event types to deliver; empty: every type.
    events TEXT[] NOT NULL DEFAULT '{}',
    secret TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id) WHERE enabled;

-- The outbox: one row per (event, webhook), written in the event's own transaction, so an
-- event is never stored without its deliveries nor delivered without being stored. The
-- row's id is the Standard Webhooks `webhook-id`, the same on every attempt.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload JSONB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A worker holds the row until then; an expired claim (a crashed worker) is taken again.
    locked_until TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at DESC);
