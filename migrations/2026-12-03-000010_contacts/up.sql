-- What a session knows of its contacts beyond their messages: the LID behind a number (or
-- a LID alone, for a contact who hides their number), the push name they gave, whether a
-- number was checked on WhatsApp (and when: checks are cached), and whether the session
-- blocked them. Keyed like chats: `+<digits>`, or `<lid>@lid` while the number is unknown.
-- `session_id` is not a foreign key, as for chats: it goes with the history (purge).
CREATE TABLE contacts (
    session_id UUID NOT NULL,
    chat TEXT NOT NULL,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    phone TEXT,
    lid TEXT,
    push_name TEXT,
    on_whatsapp BOOLEAN,
    checked_at TIMESTAMPTZ,
    blocked BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, chat),
    CHECK (chat = phone OR (phone IS NULL AND chat = lid || '@lid'))
);
CREATE UNIQUE INDEX contacts_lid_idx ON contacts (session_id, lid) WHERE lid IS NOT NULL;
