-- The CRM: boards of columns of cards; a card may link a chat of a session.
CREATE TABLE boards (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL,
    description text,
    -- Every new chat of this session becomes a card in `auto_column_id`.
    auto_session_id uuid REFERENCES sessions (id) ON DELETE SET NULL,
    auto_column_id uuid,
    -- Chats created since this moment (less a minute, for transactions still committing) are
    -- looked at by the next sweep.
    auto_scanned_to timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX boards_tenant ON boards (tenant_id, id);
CREATE INDEX boards_auto_session ON boards (auto_session_id) WHERE auto_session_id IS NOT NULL;

CREATE TABLE board_columns (
    id uuid PRIMARY KEY,
    board_id uuid NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    tenant_id uuid NOT NULL,
    name text NOT NULL,
    wip_limit integer CHECK (wip_limit > 0),
    position integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX board_columns_board ON board_columns (board_id, position);

-- Positions are gapped integers (1024 apart when renumbered): a move takes the midpoint of
-- its neighbours, and renumbers the column in the same transaction when there is no room.
-- Moves lock the columns they touch, so concurrent moves serialise and none is lost.
CREATE TABLE cards (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    board_id uuid NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    column_id uuid NOT NULL REFERENCES board_columns (id) ON DELETE CASCADE,
    position bigint NOT NULL,
    title text NOT NULL,
    description text,
    session_id uuid REFERENCES sessions (id) ON DELETE SET NULL,
    chat text,
    assignee_id uuid REFERENCES members (id) ON DELETE SET NULL,
    labels text[] NOT NULL DEFAULT '{}',
    due_at timestamptz,
    -- What the deal is worth, in the tenant's currency (for the pipeline's totals).
    value double precision,
    -- Made by the board for a new chat of its session (at most one such card per chat).
    auto boolean NOT NULL DEFAULT false,
    -- When the card entered its column (time in column).
    column_entered_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', coalesce(description, '')), 'B')
    ) STORED
);
CREATE INDEX cards_column ON cards (column_id, position);
CREATE INDEX cards_board ON cards (board_id);
CREATE INDEX cards_chat ON cards (session_id, chat) WHERE chat IS NOT NULL;
CREATE INDEX cards_search ON cards USING gin (search);
CREATE UNIQUE INDEX cards_auto ON cards (board_id, session_id, chat) WHERE auto;
-- The auto-card sweep reads a session's chats by creation time (new chats only: updates of
-- a chat changes it).
CREATE INDEX chats_created ON chats (session_id, created_at);

CREATE TABLE card_comments (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    card_id uuid NOT NULL REFERENCES cards (id) ON DELETE CASCADE,
    author_kind text NOT NULL,
    author_id uuid,
    text text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    search tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
CREATE INDEX card_comments_card ON card_comments (card_id, created_at);
CREATE INDEX card_comments_search ON card_comments USING gin (search);

-- Everything that happened to a board's cards: created, moved (with the seconds spent in the
-- column it left), assigned, updated, commented, deleted; who and when.
CREATE TABLE card_activity (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    board_id uuid NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    card_id uuid NOT NULL,
    kind text NOT NULL,
    actor_kind text NOT NULL,
    actor_id uuid,
    from_column_id uuid,
    to_column_id uuid,
    seconds_in_column bigint,
    data jsonb NOT NULL DEFAULT '{}',
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX card_activity_board ON card_activity (board_id, id DESC);
CREATE INDEX card_activity_card ON card_activity (card_id, id DESC);
