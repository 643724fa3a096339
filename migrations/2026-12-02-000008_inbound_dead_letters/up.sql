-- A contact's message that could not be stored after every attempt. It is kept here, as
-- received, so the session can ack it to WhatsApp: withheld, WhatsApp would redeliver it at
-- every login and it would fail again, holding the rest of its batch with it.
-- `payload` is bytea: it holds what `text` and `jsonb` cannot (U+0000, say).
CREATE TABLE inbound_dead_letters (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_id UUID NOT NULL,
    wa_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    payload BYTEA NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX inbound_dead_letters_wa_id_idx ON inbound_dead_letters (session_id, wa_id);
CREATE INDEX inbound_dead_letters_tenant_idx ON inbound_dead_letters (tenant_id, created_at DESC);
