//! Short-lived tokens traded for API keys (browsers, WebSocket clients).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Role;

const ISSUER: &str = "wagate";
/// How far in the future a token's `iat` may lie (nodes' clocks differ a little).
const CLOCK_SKEW_SECS: u64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The API key the token was issued for: revoking the key ends the token too.
    pub sub: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
    /// A member's login token: the member (`sub` is the member too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<Uuid>,
    /// The member's credentials version when the token was issued: a password change ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<u32>,
    /// The admin's dashboard login: a fingerprint of the admin key it was issued for, so
    /// changing the admin key ends it (`sub` and `tenant_id` are nil).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Issues a token; returns it with its expiry (seconds since the epoch).
    pub fn issue(
        &self,
        key_id: Uuid,
        tenant_id: Uuid,
        role: Role,
    ) -> anyhow::Result<(String, u64)> {
        self.sign(key_id, tenant_id, role, None, None, None)
    }

    /// Issues the admin's dashboard token, valid while the admin key has `fingerprint`.
    pub fn issue_for_admin(&self, fingerprint: String) -> anyhow::Result<(String, u64)> {
        self.sign(
            Uuid::nil(),
            Uuid::nil(),
            Role::Owner,
            None,
            None,
            Some(fingerprint),
        )
    }

    /// Issues a member's login token, valid while the member keeps `credentials_version`.
    pub fn issue_for_member(
        &self,
        member_id: Uuid,
        tenant_id: Uuid,
        role: super::permissions::MemberRole,
        credentials_version: u32,
    ) -> anyhow::Result<(String, u64)> {
        self.sign(
            member_id,
            tenant_id,
            Role::for_member(role),
            Some(member_id),
            Some(credentials_version),
            None,
        )
    }

    fn sign(
        &self,
        sub: Uuid,
        tenant_id: Uuid,
        role: Role,
        member_id: Option<Uuid>,
        ver: Option<u32>,
        admin: Option<String>,
    ) -> anyhow::Result<(String, u64)> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub,
            tenant_id,
            role,
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + self.ttl_secs,
            member_id,
            ver,
            admin,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        // We never issue a token that lives longer than the configured lifetime, or one dated
        // in the future: such a token was made by someone else with the secret, and a stolen
        // secret must not buy a token for ten years.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TokenError::Invalid)?
            .as_secs();
        if claims.exp.saturating_sub(claims.iat) > self.ttl_secs
            || claims.iat > now + CLOCK_SKEW_SECS
        {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 60);
        let (key, tenant) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, _) = keys.issue(key, tenant, Role::Owner).expect("issue");
        let claims = keys.verify(&token).expect("verify");
        assert_eq!(
            (claims.sub, claims.tenant_id, claims.role),
            (key, tenant, Role::Owner)
        );
        let other = JwtKeys::new(b"another-secret-another-secret-xx", 60);
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
        assert_eq!(keys.verify("not.a.token"), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_living_longer_than_the_ttl_is_refused() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let keys = JwtKeys::new(secret, 60);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let forge = |iat: u64, exp: u64| {
            let claims = Claims {
                sub: Uuid::new_v4(),
                tenant_id: Uuid::new_v4(),
                role: Role::Owner,
                iss: ISSUER.to_owned(),
                iat,
                exp,
                member_id: None,
                ver: None,
                admin: None,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret),
            )
            .expect("encode")
        };
        assert!(keys.verify(&forge(now, now + 60)).is_ok(), "within the ttl");
        assert_eq!(
            keys.verify(&forge(now, now + 10 * 365 * 86_400)),
            Err(TokenError::Invalid),
            "ten years"
        );
        assert_eq!(
            keys.verify(&forge(now + 3_600, now + 3_630)),
            Err(TokenError::Invalid),
            "issued in the future"
        );
    }
}
