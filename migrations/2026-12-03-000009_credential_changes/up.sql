-- Every node caches verified API keys (src/auth/cache.rs) and must hear at once when one
-- stops standing: a key revoked, its role or secret changed, or the key deleted (a tenant's
-- deletion cascades to its keys). The notice is sent when the change commits, and never for
-- a change that rolls back. Recording a key's use (`last_used_at`) sends nothing. Postgres
-- folds identical notices of one transaction into one.
CREATE FUNCTION notify_credential_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('wagate_credentials', OLD.tenant_id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_credential_change
    AFTER UPDATE OF revoked_at, role, secret_hash, prefix, tenant_id OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_credential_change();
