-- Statistics from the stored data, maintained incrementally so a dashboard never scans the
-- messages table. Every statement that inserts or changes messages appends what it changed,
-- per session and 15-minute bucket, to `stat_deltas` (append-only: concurrent writers never
-- wait on one another); a job folds the deltas into `stat_buckets`. Readers sum both, so a
-- figure is exact at once. Quarter-hour buckets regroup into the local hours and days of
-- every time zone (India's +05:30, Nepal's +05:45 included).
CREATE TABLE stat_buckets (
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_id UUID NOT NULL,
    bucket TIMESTAMPTZ NOT NULL,
    msgs_in BIGINT NOT NULL DEFAULT 0,
    msgs_out BIGINT NOT NULL DEFAULT 0,
    -- Of msgs_out: what the gateway's own agents and flows sent.
    msgs_out_bot BIGINT NOT NULL DEFAULT 0,
    msgs_failed BIGINT NOT NULL DEFAULT 0,
    -- Outgoing messages that reached the phone (delivered or read), and that were read.
    msgs_delivered BIGINT NOT NULL DEFAULT 0,
    msgs_read BIGINT NOT NULL DEFAULT 0,
    -- First responses: a contact waited (its message unanswered) until this bucket's answer.
    responses_human BIGINT NOT NULL DEFAULT 0,
    response_ms_human BIGINT NOT NULL DEFAULT 0,
    responses_bot BIGINT NOT NULL DEFAULT 0,
    response_ms_bot BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, bucket, session_id)
);
CREATE INDEX stat_buckets_bucket_idx ON stat_buckets (bucket);

CREATE TABLE stat_deltas (
    id BIGSERIAL PRIMARY KEY,
    tenant_id UUID NOT NULL,
    session_id UUID NOT NULL,
    bucket TIMESTAMPTZ NOT NULL,
    msgs_in BIGINT NOT NULL DEFAULT 0,
    msgs_out BIGINT NOT NULL DEFAULT 0,
    msgs_out_bot BIGINT NOT NULL DEFAULT 0,
    msgs_failed BIGINT NOT NULL DEFAULT 0,
    msgs_delivered BIGINT NOT NULL DEFAULT 0,
    msgs_read BIGINT NOT NULL DEFAULT 0,
    responses_human BIGINT NOT NULL DEFAULT 0,
    response_ms_human BIGINT NOT NULL DEFAULT 0,
    responses_bot BIGINT NOT NULL DEFAULT 0,
    response_ms_bot BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX stat_deltas_tenant_idx ON stat_deltas (tenant_id, bucket);

-- A chat whose contact is waiting for an answer, since its first unanswered message.
CREATE TABLE chat_waits (
    session_id UUID NOT NULL,
    chat TEXT NOT NULL,
    tenant_id UUID NOT NULL,
    since TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, chat)
);

CREATE FUNCTION stat_bucket(at TIMESTAMPTZ) RETURNS TIMESTAMPTZ
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT date_bin('15 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00') $$;

-- What the gateway itself sends (AI agents, flows, quick replies of flows) carries an
-- idempotency key of its own prefix; everything else out (the API, the phone) is a person.
CREATE FUNCTION stat_is_bot(idempotency_key TEXT) RETURNS BOOLEAN
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT coalesce(idempotency_key LIKE 'wagate:%', false) $$;

CREATE FUNCTION stat_messages_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A contact's message starts a wait unless one is running; an answer ends it.
    INSERT INTO chat_waits (session_id, chat, tenant_id, since)
    SELECT session_id, chat, min(tenant_id::text)::uuid, min(created_at)
    FROM new_messages WHERE direction = 'in'
    GROUP BY session_id, chat
    ORDER BY session_id, chat
    ON CONFLICT DO NOTHING;

    WITH answers AS (
        SELECT session_id, chat, min(created_at) AS at,
               stat_is_bot((array_agg(idempotency_key ORDER BY created_at))[1]) AS bot
        FROM new_messages WHERE direction = 'out'
        GROUP BY session_id, chat
    ), answered AS (
        DELETE FROM chat_waits w USING answers a
        WHERE w.session_id = a.session_id AND w.chat = a.chat AND w.since <= a.at
        RETURNING w.tenant_id, w.session_id, a.at, a.bot,
                  (extract(epoch FROM a.at - w.since) * 1000)::bigint AS ms
    )
    INSERT INTO stat_deltas (tenant_id, session_id, bucket, msgs_in, msgs_out, msgs_out_bot,
                             msgs_failed, msgs_delivered, msgs_read, responses_human,
                             response_ms_human, responses_bot, response_ms_bot)
    SELECT tenant_id, session_id, bucket, sum(msgs_in), sum(msgs_out), sum(msgs_out_bot),
           sum(msgs_failed), sum(msgs_delivered), sum(msgs_read), sum(responses_human),
           sum(response_ms_human), sum(responses_bot), sum(response_ms_bot)
    FROM (
        -- A message may be stored already delivered or read (history the phone synced).
        SELECT tenant_id, session_id, stat_bucket(created_at) AS bucket,
               (direction = 'in')::int AS msgs_in, (direction = 'out')::int AS msgs_out,
               (direction = 'out' AND stat_is_bot(idempotency_key))::int AS msgs_out_bot,
               (direction = 'out' AND status = 'failed')::int AS msgs_failed,
               (direction = 'out' AND status IN ('delivered', 'read'))::int AS msgs_delivered,
               (direction = 'out' AND status = 'read')::int AS msgs_read,
               0 AS responses_human, 0::bigint AS response_ms_human,
               0 AS responses_bot, 0::bigint AS response_ms_bot
        FROM new_messages
        UNION ALL
        SELECT tenant_id, session_id, stat_bucket(at), 0, 0, 0, 0, 0, 0,
               (NOT bot)::int, CASE WHEN bot THEN 0 ELSE ms END,
               bot::int, CASE WHEN bot THEN ms ELSE 0 END
        FROM answered
    ) d
    GROUP BY tenant_id, session_id, bucket;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_stats_inserted AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION stat_messages_inserted();

-- Receipts and failures, counted in the bucket the message was created in. A status only
-- moves forward (sent → delivered → read), so each is counted once; a message that fails
-- after it was counted delivered is not uncounted.
CREATE FUNCTION stat_messages_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stat_deltas (tenant_id, session_id, bucket, msgs_failed, msgs_delivered, msgs_read)
    SELECT n.tenant_id, n.session_id, stat_bucket(n.created_at),
           sum(((n.status = 'failed') AND (o.status <> 'failed'))::int),
           sum(((n.status IN ('delivered', 'read')) AND (o.status NOT IN ('delivered', 'read')))::int),
           sum(((n.status = 'read') AND (o.status <> 'read'))::int)
    FROM new_messages n JOIN old_messages o ON o.id = n.id
    WHERE n.direction = 'out' AND n.status IS DISTINCT FROM o.status
      AND (n.status IN ('failed', 'delivered', 'read'))
    GROUP BY 1, 2, 3
    HAVING sum(((n.status = 'failed') AND (o.status <> 'failed'))::int)
         + sum(((n.status IN ('delivered', 'read')) AND (o.status NOT IN ('delivered', 'read')))::int)
         + sum(((n.status = 'read') AND (o.status <> 'read'))::int) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_stats_updated AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_messages NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION stat_messages_updated();

-- The messages stored before this migration, counted once (their receipts as they stand).
INSERT INTO stat_buckets (tenant_id, session_id, bucket, msgs_in, msgs_out, msgs_out_bot,
                          msgs_failed, msgs_delivered, msgs_read)
SELECT m.tenant_id, m.session_id, stat_bucket(m.created_at),
       count(*) FILTER (WHERE direction = 'in'), count(*) FILTER (WHERE direction = 'out'),
       count(*) FILTER (WHERE direction = 'out' AND stat_is_bot(idempotency_key)),
       count(*) FILTER (WHERE direction = 'out' AND status = 'failed'),
       count(*) FILTER (WHERE direction = 'out' AND status IN ('delivered', 'read')),
       count(*) FILTER (WHERE direction = 'out' AND status = 'read')
FROM messages m JOIN tenants t ON t.id = m.tenant_id
GROUP BY 1, 2, 3;

-- Reports generated in the background (POST /api/v1/reports): the file is kept in chunks so
-- any node can stream it and none holds it whole.
CREATE TABLE reports (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    format TEXT NOT NULL,
    range_from TIMESTAMPTZ NOT NULL,
    range_to TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    rows BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    locked_until TIMESTAMPTZ,
    attempts INT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ
);
CREATE INDEX reports_tenant_idx ON reports (tenant_id, created_at DESC);
CREATE INDEX reports_pending_idx ON reports (created_at) WHERE status IN ('pending', 'running');

CREATE TABLE report_chunks (
    report_id UUID NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    seq INT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (report_id, seq)
);

-- Statistics over a period read the handoffs and answers of the agents, and the webhooks'
-- deliveries, by tenant and time.
CREATE INDEX webhook_deliveries_tenant_idx ON webhook_deliveries (tenant_id, created_at);
CREATE INDEX chats_tenant_active_idx ON chats (tenant_id, last_message_at);
