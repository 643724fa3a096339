// @generated automatically by Diesel CLI.

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

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(events -> tenants (tenant_id));
diesel::joinable!(sessions -> tenants (tenant_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    events,
    sessions,
    tenants,
    wa_store_devices,
    wa_store_entries,
);
