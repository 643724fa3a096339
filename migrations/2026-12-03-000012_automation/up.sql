-- Automation (issue 21): triggers, flows and their executions, bot control per session,
-- and the events waiting for automation (written with the events themselves).

-- Schedules, time-of-day and weekday conditions read the tenant's time zone.
ALTER TABLE tenants ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';
-- Labels a chat carries (conditions on `chat_label`).
ALTER TABLE chats ADD COLUMN labels TEXT[] NOT NULL DEFAULT '{}';

CREATE TABLE flows (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT,
    steps JSONB NOT NULL,
    -- Declared variables with their defaults (`POST …/execute` may set them).
    variables JSONB NOT NULL DEFAULT '{}',
    enabled BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX flows_tenant_idx ON flows (tenant_id, id);

CREATE TABLE triggers (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    session_id UUID REFERENCES sessions(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    event TEXT NOT NULL,
    conditions JSONB NOT NULL DEFAULT '[]',
    flow_id UUID REFERENCES flows(id) ON DELETE CASCADE,
    reply_text TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    cooldown_secs INTEGER NOT NULL DEFAULT 0,
    continue_after BOOLEAN NOT NULL DEFAULT false,
    schedule TEXT,
    -- Where a schedule's reply or flow goes (a schedule has no message to answer).
    chat TEXT,
    enabled BOOLEAN NOT NULL DEFAULT true,
    next_fire_at TIMESTAMPTZ,
    fired BIGINT NOT NULL DEFAULT 0,
    last_fired_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((flow_id IS NULL) <> (reply_text IS NULL))
);
CREATE INDEX triggers_tenant_idx ON triggers (tenant_id, id);
CREATE INDEX triggers_listening_idx ON triggers (tenant_id, event) WHERE enabled;
CREATE INDEX triggers_schedule_idx ON triggers (next_fire_at) WHERE enabled AND event = 'schedule';
CREATE INDEX triggers_flow_idx ON triggers (flow_id);

-- Bumped by every change to a tenant's triggers: the compiled set is cached per version.
CREATE TABLE automation_versions (
    tenant_id UUID PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    version BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE trigger_cooldowns (
    trigger_id UUID NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    session_id UUID NOT NULL,
    chat TEXT NOT NULL,
    last_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (session_id, chat, trigger_id)
);

CREATE TABLE flow_executions (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    flow_id UUID REFERENCES flows(id) ON DELETE SET NULL,
    trigger_id UUID REFERENCES triggers(id) ON DELETE SET NULL,
    -- What started it: trigger | api | schedule.
    source TEXT NOT NULL,
    event_id BIGINT,
    session_id UUID REFERENCES sessions(id) ON DELETE CASCADE,
    chat TEXT,
    -- The flow as it was when the execution started: editing a flow never breaks one running.
    steps JSONB NOT NULL,
    flow_variables JSONB NOT NULL DEFAULT '{}',
    status TEXT NOT NULL CHECK (status IN (
        'running', 'waiting', 'waiting_reply', 'completed', 'failed', 'cancelled')),
    current_step TEXT,
    variables JSONB NOT NULL DEFAULT '{}',
    seq INTEGER NOT NULL DEFAULT 0,
    -- The reply that resumed a `wait_for_reply`, until the step takes it.
    input TEXT,
    due_at TIMESTAMPTZ,
    locked_until TIMESTAMPTZ,
    error TEXT,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
CREATE INDEX flow_executions_due_idx ON flow_executions (due_at)
    WHERE status IN ('running', 'waiting', 'waiting_reply');
CREATE INDEX flow_executions_reply_idx ON flow_executions (session_id, chat)
    WHERE status = 'waiting_reply';
CREATE INDEX flow_executions_flow_idx ON flow_executions (flow_id, id);
CREATE INDEX flow_executions_tenant_idx ON flow_executions (tenant_id, id);
CREATE INDEX flow_executions_finished_idx ON flow_executions (finished_at)
    WHERE finished_at IS NOT NULL;

-- One row per step run; a waiting step has its `waiting` row and then its outcome's.
CREATE TABLE flow_steps (
    id BIGSERIAL PRIMARY KEY,
    execution_id UUID NOT NULL REFERENCES flow_executions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    input JSONB NOT NULL DEFAULT 'null',
    output JSONB NOT NULL DEFAULT 'null',
    error TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX flow_steps_execution_idx ON flow_steps (execution_id, seq, id);

-- Bot control per session: paused (until resumed or `paused_until`) or stopped, neither
-- triggers nor agents answer on the session.
CREATE TABLE session_bots (
    session_id UUID PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('active', 'paused', 'stopped')),
    paused_until TIMESTAMPTZ,
    reason TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The events automation has to look at: written by the statement that writes the events
-- (whichever path writes them), only for tenants with a trigger listening (or a flow waiting
-- for the chat's reply). Claimed with SKIP LOCKED; `handled` tells the AI pipeline a
-- trigger or a flow took the message, so the agent does not also answer it.
CREATE TABLE automation_work (
    tenant_id UUID NOT NULL,
    event_id BIGINT NOT NULL,
    session_id UUID,
    kind TEXT NOT NULL,
    chat TEXT,
    locked_until TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    handled BOOLEAN NOT NULL DEFAULT false,
    done_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX automation_work_due_idx ON automation_work (event_id) WHERE done_at IS NULL;
CREATE INDEX automation_work_chat_idx ON automation_work (session_id, chat) WHERE done_at IS NULL;
CREATE INDEX automation_work_done_idx ON automation_work (done_at) WHERE done_at IS NOT NULL;

CREATE FUNCTION automation_work_for_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO automation_work (tenant_id, event_id, session_id, kind, chat)
    SELECT n.tenant_id, n.id, n.session_id, n.kind, n.data->>'chat'
    FROM new_events n
    WHERE n.kind IN ('message.received', 'message.status', 'session.connected', 'session.disconnected')
      AND (EXISTS (SELECT 1 FROM triggers t
                   WHERE t.tenant_id = n.tenant_id AND t.enabled
                     AND (t.event = n.kind
                          OR (n.kind = 'message.received' AND t.event = 'chat.first_message'))
                     AND (t.session_id IS NULL OR t.session_id = n.session_id))
           OR (n.kind = 'message.received'
               AND EXISTS (SELECT 1 FROM flow_executions x
                           WHERE x.session_id = n.session_id AND x.chat = n.data->>'chat'
                             AND x.status = 'waiting_reply')))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER events_automation_work AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION automation_work_for_events();
