// @generated automatically by Diesel CLI.

diesel::table! {
    ai_agents (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        provider -> Text,
        model -> Text,
        credential_id -> Nullable<Uuid>,
        system_prompt -> Text,
        temperature -> Nullable<Float4>,
        max_output_tokens -> Nullable<Int4>,
        context_messages -> Int4,
        debounce_ms -> Int4,
        handoff_keywords -> Array<Text>,
        fallback_text -> Nullable<Text>,
        answer_groups -> Bool,
        describe_media -> Bool,
        split_replies -> Bool,
        typing -> Bool,
        tools -> Array<Text>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    ai_calls (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Nullable<Uuid>,
        chat -> Nullable<Text>,
        agent_id -> Nullable<Uuid>,
        kind -> Text,
        provider -> Nullable<Text>,
        model -> Nullable<Text>,
        prompt_tokens -> Int8,
        output_tokens -> Int8,
        latency_ms -> Nullable<Int4>,
        cached -> Bool,
        error -> Nullable<Text>,
        message_ids -> Array<Uuid>,
        tool_calls -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    ai_credentials (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        provider -> Text,
        base_url -> Text,
        api_key_sealed -> Bytea,
        key_hint -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    ai_pending (session_id, chat) {
        session_id -> Uuid,
        chat -> Text,
        tenant_id -> Uuid,
        since_event_id -> Int8,
        through_event_id -> Int8,
        due_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
        attempts -> Int4,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Int8,
        tenant_id -> Nullable<Uuid>,
        actor_kind -> Text,
        actor_id -> Nullable<Uuid>,
        method -> Text,
        route -> Text,
        object_id -> Nullable<Text>,
        status -> Int2,
        request_id -> Nullable<Text>,
        at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        role -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    chat_agents (session_id, chat) {
        session_id -> Uuid,
        chat -> Text,
        agent_id -> Uuid,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    chats (session_id, chat) {
        session_id -> Uuid,
        chat -> Text,
        tenant_id -> Uuid,
        contact_name -> Nullable<Text>,
        last_message_id -> Nullable<Uuid>,
        last_message_at -> Nullable<Timestamptz>,
        unread_count -> Int4,
        messages_in -> Int8,
        messages_out -> Int8,
        bot_enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    contacts (session_id, chat) {
        session_id -> Uuid,
        chat -> Text,
        tenant_id -> Uuid,
        phone -> Nullable<Text>,
        lid -> Nullable<Text>,
        push_name -> Nullable<Text>,
        on_whatsapp -> Nullable<Bool>,
        checked_at -> Nullable<Timestamptz>,
        blocked -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    events (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Int8,
        session_id -> Nullable<Uuid>,
        kind -> Text,
        data -> Jsonb,
        at -> Timestamptz,
    }
}

diesel::table! {
    inbound_dead_letters (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Uuid,
        wa_id -> Text,
        sender -> Text,
        payload -> Bytea,
        error -> Text,
        attempts -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    media (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Uuid,
        kind -> Text,
        mime_type -> Text,
        file_name -> Nullable<Text>,
        size -> Int8,
        sha256 -> Text,
        bytes -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    messages (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Uuid,
        wa_id -> Text,
        direction -> Text,
        chat -> Text,
        own_phone -> Text,
        kind -> Text,
        body -> Jsonb,
        text -> Nullable<Text>,
        quoted_id -> Nullable<Text>,
        status -> Text,
        error -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    prompt_sessions (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        goal -> Nullable<Text>,
        answers -> Array<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    prompts (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Nullable<Uuid>,
        version -> Int4,
        text -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    sandbox_phones (phone) {
        phone -> Text,
        tenant_id -> Uuid,
        claimed_at -> Timestamptz,
    }
}

diesel::table! {
    session_agents (session_id) {
        session_id -> Uuid,
        agent_id -> Uuid,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        webhook_url -> Nullable<Text>,
        status -> Text,
        desired -> Text,
        phone -> Nullable<Text>,
        jid -> Nullable<Text>,
        reconnect_attempts -> Int4,
        last_error -> Nullable<Text>,
        qr_code -> Nullable<Text>,
        qr_expires_at -> Nullable<Timestamptz>,
        owner_node -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    tenants (id) {
        id -> Uuid,
        name -> Text,
        tier -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_event_id -> Int8,
        send_rate_per_minute -> Nullable<Int4>,
    }
}

diesel::table! {
    wa_store_devices (store_id) {
        store_id -> Uuid,
        value -> Bytea,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    wa_store_entries (store_id, kind, lookup) {
        store_id -> Uuid,
        kind -> Int2,
        lookup -> Bytea,
        grp -> Nullable<Bytea>,
        grp2 -> Nullable<Bytea>,
        num -> Nullable<Int8>,
        ts -> Nullable<Int8>,
        ts2 -> Nullable<Int8>,
        flag -> Bool,
        value -> Bytea,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        webhook_id -> Uuid,
        tenant_id -> Uuid,
        event_id -> Int8,
        event_type -> Text,
        payload -> Jsonb,
        status -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Nullable<Uuid>,
        url -> Text,
        events -> Array<Text>,
        secret -> Text,
        enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    flows (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        steps -> Jsonb,
        variables -> Jsonb,
        enabled -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    triggers (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        session_id -> Nullable<Uuid>,
        name -> Text,
        event -> Text,
        conditions -> Jsonb,
        flow_id -> Nullable<Uuid>,
        reply_text -> Nullable<Text>,
        priority -> Int4,
        cooldown_secs -> Int4,
        continue_after -> Bool,
        schedule -> Nullable<Text>,
        chat -> Nullable<Text>,
        enabled -> Bool,
        next_fire_at -> Nullable<Timestamptz>,
        fired -> Int8,
        last_fired_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    flow_executions (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        flow_id -> Nullable<Uuid>,
        trigger_id -> Nullable<Uuid>,
        source -> Text,
        event_id -> Nullable<Int8>,
        session_id -> Nullable<Uuid>,
        chat -> Nullable<Text>,
        steps -> Jsonb,
        flow_variables -> Jsonb,
        status -> Text,
        current_step -> Nullable<Text>,
        variables -> Jsonb,
        seq -> Int4,
        input -> Nullable<Text>,
        due_at -> Nullable<Timestamptz>,
        locked_until -> Nullable<Timestamptz>,
        error -> Nullable<Text>,
        started_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    flow_steps (id) {
        id -> Int8,
        execution_id -> Uuid,
        seq -> Int4,
        step_id -> Text,
        #[sql_name = "type"]
        kind -> Text,
        outcome -> Text,
        input -> Jsonb,
        output -> Jsonb,
        error -> Nullable<Text>,
        started_at -> Timestamptz,
        finished_at -> Timestamptz,
    }
}

diesel::table! {
    session_bots (session_id) {
        session_id -> Uuid,
        tenant_id -> Uuid,
        state -> Text,
        paused_until -> Nullable<Timestamptz>,
        reason -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(ai_agents -> ai_credentials (credential_id));
diesel::joinable!(ai_agents -> tenants (tenant_id));
diesel::joinable!(ai_calls -> tenants (tenant_id));
diesel::joinable!(ai_credentials -> tenants (tenant_id));
diesel::joinable!(ai_pending -> sessions (session_id));
diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(chat_agents -> ai_agents (agent_id));
diesel::joinable!(chat_agents -> sessions (session_id));
diesel::joinable!(chats -> tenants (tenant_id));
diesel::joinable!(contacts -> tenants (tenant_id));
diesel::joinable!(events -> tenants (tenant_id));
diesel::joinable!(inbound_dead_letters -> tenants (tenant_id));
diesel::joinable!(media -> tenants (tenant_id));
diesel::joinable!(messages -> tenants (tenant_id));
diesel::joinable!(prompt_sessions -> tenants (tenant_id));
diesel::joinable!(prompts -> prompt_sessions (session_id));
diesel::joinable!(prompts -> tenants (tenant_id));
diesel::joinable!(sandbox_phones -> tenants (tenant_id));
diesel::joinable!(session_agents -> ai_agents (agent_id));
diesel::joinable!(session_agents -> sessions (session_id));
diesel::joinable!(sessions -> tenants (tenant_id));
diesel::joinable!(webhook_deliveries -> tenants (tenant_id));
diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhooks -> tenants (tenant_id));

diesel::table! {
    boards (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        auto_session_id -> Nullable<Uuid>,
        auto_column_id -> Nullable<Uuid>,
        auto_scanned_to -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    board_columns (id) {
        id -> Uuid,
        board_id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        wip_limit -> Nullable<Int4>,
        position -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    cards (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        board_id -> Uuid,
        column_id -> Uuid,
        position -> Int8,
        title -> Text,
        description -> Nullable<Text>,
        session_id -> Nullable<Uuid>,
        chat -> Nullable<Text>,
        assignee_id -> Nullable<Uuid>,
        labels -> Array<Text>,
        due_at -> Nullable<Timestamptz>,
        value -> Nullable<Float8>,
        auto -> Bool,
        column_entered_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    card_comments (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        card_id -> Uuid,
        author_kind -> Text,
        author_id -> Nullable<Uuid>,
        text -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    card_activity (id) {
        id -> Int8,
        tenant_id -> Uuid,
        board_id -> Uuid,
        card_id -> Uuid,
        kind -> Text,
        actor_kind -> Text,
        actor_id -> Nullable<Uuid>,
        from_column_id -> Nullable<Uuid>,
        to_column_id -> Nullable<Uuid>,
        seconds_in_column -> Nullable<Int8>,
        data -> Jsonb,
        at -> Timestamptz,
    }
}

diesel::table! {
    notifications (id) {
        id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        member_id -> Nullable<Uuid>,
        kind -> Text,
        level -> Text,
        title -> Text,
        body -> Text,
        data -> Jsonb,
        source -> Nullable<Text>,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    quick_replies (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        shortcut -> Text,
        title -> Text,
        text -> Text,
        media_id -> Nullable<Uuid>,
        enabled -> Bool,
        uses -> Int8,
        last_used_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    members (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        email -> Text,
        name -> Text,
        role -> Text,
        password_hash -> Text,
        disabled -> Bool,
        credentials_version -> Int4,
        last_login_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(members -> tenants (tenant_id));
diesel::joinable!(board_columns -> boards (board_id));
diesel::joinable!(cards -> board_columns (column_id));
diesel::joinable!(card_comments -> cards (card_id));

diesel::allow_tables_to_appear_in_same_query!(
    ai_agents,
    ai_calls,
    ai_credentials,
    ai_pending,
    api_keys,
    audit_log,
    board_columns,
    boards,
    card_activity,
    card_comments,
    cards,
    chat_agents,
    chats,
    contacts,
    events,
    flow_executions,
    flow_steps,
    flows,
    inbound_dead_letters,
    media,
    members,
    messages,
    notifications,
    quick_replies,
    prompt_sessions,
    prompts,
    sandbox_phones,
    session_agents,
    session_bots,
    sessions,
    tenants,
    triggers,
    wa_store_devices,
    wa_store_entries,
    webhook_deliveries,
    webhooks,
);
