-- Notifications for a tenant's people: made by the NotificationActor from system events
-- (a session logged out, failing or not answering; a handoff; a flow failing), by the gateway
-- (a card assigned, a webhook endpoint dead-lettering) and by the admin (to one tenant or all).
CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    -- NULL: the admin's, for every tenant.
    tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
    -- NULL: every member of the tenant (and its API keys); else that member only.
    member_id uuid REFERENCES members (id) ON DELETE CASCADE,
    kind text NOT NULL,
    level text NOT NULL CHECK (level IN ('info', 'warning', 'critical')),
    title text NOT NULL,
    body text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}',
    -- What made it (`event:<tenant>:<id>`, `webhook:<id>:<day>`): made once, whatever retries.
    source text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX notifications_tenant ON notifications (tenant_id, created_at DESC, id);
CREATE INDEX notifications_expiry ON notifications (expires_at) WHERE expires_at IS NOT NULL;

-- Read state per reader (a member, or an API key): read, or dismissed for them.
CREATE TABLE notification_reads (
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    reader_id uuid NOT NULL,
    read_at timestamptz,
    dismissed_at timestamptz,
    PRIMARY KEY (reader_id, notification_id)
);

-- System events the NotificationActor has yet to look at, written with the event.
CREATE TABLE notification_work (
    tenant_id uuid NOT NULL,
    event_id bigint NOT NULL,
    locked_until timestamptz,
    PRIMARY KEY (tenant_id, event_id),
    FOREIGN KEY (tenant_id, event_id) REFERENCES events (tenant_id, id) ON DELETE CASCADE
);

-- The kinds in `wagate_actors::notices::NOTICE_EVENTS`; rare, so the scan of each insert's
-- new rows is all it costs the hot path.
CREATE FUNCTION notification_work_for_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_work (tenant_id, event_id)
    SELECT n.tenant_id, n.id FROM new_events n
    WHERE n.kind IN ('session.logged_out', 'session.reconnect_failed',
                     'session.health_check_failed', 'ai.handoff')
       OR (n.kind = 'flow.execution' AND n.data->>'phase' = 'failed')
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER events_notification_work AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION notification_work_for_events();
