-- Canned answers a tenant's people (and flows) send by id or shortcut, with `{{ variables }}`.
CREATE TABLE quick_replies (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- `/price`: lower case, unique in the tenant.
    shortcut text NOT NULL,
    title text NOT NULL,
    text text NOT NULL,
    -- An upload of a session: the reply goes as that media with the text as its caption.
    media_id uuid,
    enabled boolean NOT NULL DEFAULT true,
    uses bigint NOT NULL DEFAULT 0,
    last_used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, shortcut)
);
CREATE INDEX quick_replies_popular ON quick_replies (tenant_id, uses DESC);
