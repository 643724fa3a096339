-- Triggers may listen to `card.moved` (a card of the CRM moved to another column): its work
-- row is written with the event, as for messages (the event's `chat` is the card's), when the
-- card changed column.
CREATE OR REPLACE FUNCTION automation_work_for_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO automation_work (tenant_id, event_id, session_id, kind, chat)
    SELECT n.tenant_id, n.id, n.session_id, n.kind, n.data->>'chat'
    FROM new_events n
    WHERE n.kind IN ('message.received', 'message.status', 'session.connected', 'session.disconnected',
                     'card.moved')
      -- A card reordered within its column did not move on.
      AND (n.kind <> 'card.moved' OR n.data->>'from_column_id' IS DISTINCT FROM n.data->>'to_column_id')
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
