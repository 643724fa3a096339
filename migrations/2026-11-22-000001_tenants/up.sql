-- Tenants and their API keys. Every later tenant-owned table references tenants(id)
-- ON DELETE CASCADE, so deleting a tenant removes everything it owns in one statement.
CREATE TABLE tenants (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    tier TEXT NOT NULL CHECK (tier IN ('standard', 'professional', 'enterprise')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A key is `wag_<prefix>_<secret>`: the prefix finds the row, the SHA-256 of the secret is
-- compared in constant time. The secret itself is never stored.
CREATE TABLE api_keys (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'read_only')),
    prefix TEXT NOT NULL UNIQUE,
    secret_hash BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);

CREATE INDEX api_keys_tenant_id_idx ON api_keys (tenant_id);
