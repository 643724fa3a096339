-- Sandbox mode: which tenant a simulated phone number belongs to. A number linked to one
-- tenant's session cannot be linked, or written from, by another tenant: on the simulated
-- network (as on WhatsApp) every device linked to a number sees all of its messages.
CREATE TABLE sandbox_phones (
    -- E.164 digits, no `+`.
    phone TEXT PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_phones_tenant ON sandbox_phones (tenant_id);

-- Numbers already linked keep their first tenant.
INSERT INTO sandbox_phones (phone, tenant_id, claimed_at)
SELECT DISTINCT ON (ltrim(phone, '+')) ltrim(phone, '+'), tenant_id, created_at
FROM sessions
WHERE phone IS NOT NULL
ORDER BY ltrim(phone, '+'), created_at;
