-- A tenant's people: they log in with an email and a password (Argon2id, PHC string) and act
-- with their role. `credentials_version` is written into each login token: a password change
-- bumps it and so ends every token issued before.
CREATE TABLE members (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Trimmed and lower-cased by the gateway.
    email text NOT NULL,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    password_hash text NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    credentials_version integer NOT NULL DEFAULT 1,
    last_login_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);
-- A login without a tenant finds the member by email alone.
CREATE INDEX members_email ON members (email);

-- A member's token must stop working at once on every node when the member is deleted,
-- disabled, changes role or password: the same notice as a revoked API key.
CREATE TRIGGER members_credential_change
    AFTER UPDATE OF role, disabled, credentials_version, tenant_id OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION notify_credential_change();

-- Every mutating request of a tenant: who (an API key, a member or the admin), what (method,
-- route pattern, the object the path names), the answer's status and when. Never a body,
-- a query string or a credential. Written in batches, off the request's path.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    -- NULL: an admin action that names no tenant.
    tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
    actor_kind text NOT NULL CHECK (actor_kind IN ('key', 'member', 'admin')),
    actor_id uuid,
    method text NOT NULL,
    route text NOT NULL,
    object_id text,
    status smallint NOT NULL,
    request_id text,
    at timestamptz NOT NULL
);
-- Listed newest first per tenant; ids grow with time (entries are written as they come).
CREATE INDEX audit_log_tenant_id ON audit_log (tenant_id, id DESC);
CREATE INDEX audit_log_at ON audit_log (at);
