-- AI agents (issue 20): provider credentials, agents, which agent answers a session or a
-- chat, the chats waiting for an answer (written with their message.received events), and
-- every model call with its outcome and tokens.

CREATE TABLE ai_credentials (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    base_url TEXT NOT NULL,
    -- Sealed with the store key (AES-256-GCM, the credential id as associated data).
    api_key_sealed BYTEA NOT NULL,
    key_hint TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ai_credentials_tenant_idx ON ai_credentials (tenant_id, id);

CREATE TABLE ai_agents (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    credential_id UUID REFERENCES ai_credentials(id) ON DELETE SET NULL,
    system_prompt TEXT NOT NULL,
    temperature REAL,
    max_output_tokens INTEGER,
    context_messages INTEGER NOT NULL,
    debounce_ms INTEGER NOT NULL,
    handoff_keywords TEXT[] NOT NULL DEFAULT '{}',
    fallback_text TEXT,
    answer_groups BOOLEAN NOT NULL DEFAULT false,
    describe_media BOOLEAN NOT NULL DEFAULT false,
    split_replies BOOLEAN NOT NULL DEFAULT true,
    typing BOOLEAN NOT NULL DEFAULT true,
    -- The gateway tools the model may call (handoff_to_human, set_contact_name).
    tools TEXT[] NOT NULL DEFAULT '{}',
    -- Bumped by every change: part of the response cache's key.
    version BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ai_agents_tenant_idx ON ai_agents (tenant_id, id);

-- The agent answering a session's chats; a chat may override it.
CREATE TABLE session_agents (
    session_id UUID PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    agent_id UUID NOT NULL REFERENCES ai_agents(id) ON DELETE CASCADE,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX session_agents_agent_idx ON session_agents (agent_id);

CREATE TABLE chat_agents (
    session_id UUID NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    chat TEXT NOT NULL,
    agent_id UUID NOT NULL REFERENCES ai_agents(id) ON DELETE CASCADE,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, chat)
);
CREATE INDEX chat_agents_agent_idx ON chat_agents (agent_id);

-- A chat with messages the agent has not answered: written in the statement that stores
-- the messages and their events, so a crash between a message and its answer loses nothing.
-- One row per chat: more messages push `due_at` on (the debounce) and raise
-- `through_event_id`; the answer covers the events after `since_event_id` up to it.
CREATE TABLE ai_pending (
    session_id UUID NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    chat TEXT NOT NULL,
    tenant_id UUID NOT NULL,
    since_event_id BIGINT NOT NULL,
    through_event_id BIGINT NOT NULL,
    due_at TIMESTAMPTZ NOT NULL,
    locked_until TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, chat)
);
CREATE INDEX ai_pending_due_idx ON ai_pending (due_at);

-- Every model call and every decision that sent something or handed off: the stats, the
-- usage per chat and day, the reply cap and the tokens budget read it.
CREATE TABLE ai_calls (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    session_id UUID,
    chat TEXT,
    agent_id UUID,
    -- reply | fallback | error | handoff | generate | suggest
    kind TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    cached BOOLEAN NOT NULL DEFAULT false,
    error TEXT,
    message_ids UUID[] NOT NULL DEFAULT '{}',
    -- The tools the model called for this answer: [{"id", "name", "arguments"}].
    tool_calls JSONB NOT NULL DEFAULT '[]',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ai_calls_tenant_idx ON ai_calls (tenant_id, created_at);
CREATE INDEX ai_calls_chat_idx ON ai_calls (session_id, chat, created_at);
CREATE INDEX ai_calls_agent_idx ON ai_calls (agent_id, created_at);

-- The prompt generator (seed 000 §6): a fixed sequence of questions, the answers, and the
-- prompts the model wrote from them (versioned per session).
CREATE TABLE prompt_sessions (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    goal TEXT,
    answers TEXT[] NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX prompt_sessions_tenant_idx ON prompt_sessions (tenant_id, id);

CREATE TABLE prompts (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    session_id UUID REFERENCES prompt_sessions(id) ON DELETE SET NULL,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX prompts_tenant_idx ON prompts (tenant_id, id);
