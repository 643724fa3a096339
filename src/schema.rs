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
    tenants (id) {
        id -> Uuid,
        name -> Text,
        tier -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
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

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    tenants,
    wa_store_devices,
    wa_store_entries,
);
