DROP TRIGGER api_keys_credential_change ON api_keys;
DROP FUNCTION notify_credential_change();
