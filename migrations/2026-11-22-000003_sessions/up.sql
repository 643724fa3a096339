-- Sessions: one linked WhatsApp account each. The row is also the session's lease: the node
-- in `owner_node` holds its only live SessionActor until `lease_expires_at`, renewed by a
-- heartbeat; another node may take it over only after that.
CREATE TABLE sessions (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    webhook_url TEXT,
    status TEXT NOT NULL DEFAULT 'stopped' CHECK (status IN (
        'stopped', 'starting', 'qr', 'pairing', 'connected', 'reconnecting', 'logged_out', 'failed')),
    -- What the operator asked for: `running` sessions are resumed at boot and taken over
    -- when their owner dies; `stopped` ones are left alone.
    desired TEXT NOT NULL DEFAULT 'stopped' CHECK (desired IN ('running', 'stopped')),
    phone TEXT,
    jid TEXT,
    reconnect_attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    -- The QR code on show (status `qr`), so any node can serve it.
    qr_code TEXT,
    qr_expires_at TIMESTAMPTZ,
    owner_node TEXT,
    lease_expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX sessions_tenant_id_idx ON sessions (tenant_id, created_at);
CREATE INDEX sessions_owner_node_idx ON sessions (owner_node) WHERE owner_node IS NOT NULL;
CREATE INDEX sessions_desired_running_idx ON sessions (id) WHERE desired = 'running';

-- Events get a monotonic id per tenant: the tenant row holds the last one handed out, so
-- taking the next id locks that row and ids never interleave out of order.
ALTER TABLE tenants ADD COLUMN last_event_id BIGINT NOT NULL DEFAULT 0;

CREATE TABLE events (
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    session_id UUID,
    kind TEXT NOT NULL,
    data JSONB NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX events_session_idx ON events (session_id, id) WHERE session_id IS NOT NULL;
