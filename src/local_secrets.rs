//! Secrets of a `local` installation that nobody configured: the JWT secret and the key that
//! seals WhatsApp session keys. Public defaults would let anyone who read this repository forge a
//! tenant's token or open its stored keys, so each installation makes its own on first start,
//! keeps them in `<data_dir>/secrets.json` (mode 0600) and reuses them on every start after.
//! Configured values (`APP_AUTH__JWT_SECRET`, `APP_STORE__ENCRYPTION_KEY`) always win.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore as _;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::configuration::{Environment, Settings};

const FILE_NAME: &str = "secrets.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    /// HS256 secret for tokens: 32 random bytes, base64.
    jwt_secret: String,
    /// AES-256-GCM key for the key store: 32 random bytes, base64.
    store_encryption_key: String,
}

/// Where a data directory keeps its generated secrets.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Fills the secrets a `local` configuration left unset from the data directory's secrets
/// file, creating it on first start. Production settings are returned untouched (validation
/// already required every secret there).
pub fn fill(mut settings: Settings) -> anyhow::Result<Settings> {
    if settings.environment != Environment::Local
        || (settings.auth.jwt_secret.is_some() && settings.store.encryption_key.is_some())
    {
        return Ok(settings);
    }
    let secrets = load_or_create(&settings.application.data_dir)?;
    if settings.auth.jwt_secret.is_none() {
        settings.auth.jwt_secret = Some(SecretString::from(secrets.jwt_secret));
    }
    if settings.store.encryption_key.is_none() {
        settings.store.encryption_key = Some(SecretString::from(secrets.store_encryption_key));
    }
    settings.validate().with_context(|| {
        format!(
            "the secrets in {}",
            path(&settings.application.data_dir).display()
        )
    })?;
    Ok(settings)
}

fn load_or_create(data_dir: &Path) -> anyhow::Result<SecretsFile> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let file = path(data_dir);
    let fresh = SecretsFile {
        jwt_secret: random_base64(),
        store_encryption_key: random_base64(),
    };
    // create_new: two processes sharing a data directory agree on whichever wrote first.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
    {
        Ok(mut f) => {
            let body = serde_json::to_vec_pretty(&fresh)?;
            f.write_all(&body)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", file.display()))?;
            tracing::info!(file = %file.display(), "generated this installation's secrets");
            Ok(fresh)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&file),
        Err(e) => Err(e).with_context(|| format!("creating {}", file.display())),
    }
}

fn read(file: &Path) -> anyhow::Result<SecretsFile> {
    // A writer that just won the race may not have written yet: give it a moment.
    for _ in 0..50 {
        let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        if body.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let secrets: SecretsFile = serde_json::from_slice(&body)
            .with_context(|| format!("{} is not a secrets file wagate wrote", file.display()))?;
        let mode = std::fs::metadata(file)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %file.display(), "the secrets file was readable by others: mode set to 0600");
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
        return Ok(secrets);
    }
    bail!("{} stayed empty", file.display())
}

fn random_base64() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    BASE64.encode(bytes)
}
