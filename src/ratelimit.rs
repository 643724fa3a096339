//! Rate limits per tenant (or client IP, before authentication) and route class, as the platform brief
//! describes: a generous standard class, a stricter one for destructive routes, one for the
//! admin, a very strict one for "nuclear" operations, and one for trading keys for tokens.

use std::time::Duration;

use actix_web::http::Method;

use crate::app::AppState;
use crate::auth::Caller;
use crate::configuration::LimitSettings;
use crate::error::ApiError;
use crate::kv::{Decision, RateLimiter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Standard,
    Sensitive,
    Admin,
    Nuclear,
    Auth,
}

impl RouteClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteClass::Standard => "standard",
            RouteClass::Sensitive => "sensitive",
            RouteClass::Admin => "admin",
            RouteClass::Nuclear => "nuclear",
            RouteClass::Auth => "auth",
        }
    }

    /// The class of an authenticated request.
    pub fn classify(caller: &Caller, method: &Method, path: &str) -> RouteClass {
        if path.ends_with("/nuke") {
            return RouteClass::Nuclear;
        }
        if *caller == Caller::Admin {
            return RouteClass::Admin;
        }
        let destructive = *method == Method::DELETE
            || (*method == Method::POST
                && (path.ends_with("/api-keys") || path.ends_with("/logout")));
        if destructive {
            RouteClass::Sensitive
        } else {
            RouteClass::Standard
        }
    }

    fn limits(&self, state: &AppState) -> LimitSettings {
        let l = &state.settings.rate_limit;
        match self {
            RouteClass::Standard => l.standard,
            RouteClass::Sensitive => l.sensitive,
            RouteClass::Admin => l.admin,
            RouteClass::Nuclear => l.nuclear,
            RouteClass::Auth => l.auth,
        }
    }
}

/// Counts one request of `subject` in `class`; 429 when over the limit. `None` when disabled.
pub async fn check(
    state: &AppState,
    subject: &str,
    class: RouteClass,
) -> Result<Option<Decision>, ApiError> {
    if !state.settings.rate_limit.enabled {
        return Ok(None);
    }
    let limits = class.limits(state);
    let key = format!("{subject}:{}", class.as_str());
    let window = Duration::from_secs(limits.window_secs);
    let decision = match state.ephemeral.hit(&key, limits.limit, window).await {
        Ok(d) => d,
        Err(e) => {
            // Fail open: a broken counter must not take the API down.
            tracing::warn!(error = %e, "rate limiter failed; letting the request through");
            return Ok(None);
        }
    };
    if !decision.allowed {
        return Err(refused(
            class.as_str(),
            decision.limit,
            decision.reset_after.as_secs().max(1),
        ));
    }
    Ok(Some(decision))
}

/// The subjects a failed authentication counts against: the client address and, when the
/// credential is shaped like an API key, its prefix (guesses spread over many addresses).
pub fn auth_failure_subjects(peer: &str, credential: Option<&str>) -> Vec<String> {
    let mut subjects = vec![format!("ip:{peer}")];
    if let Some((prefix, _)) = credential.and_then(crate::auth::keys::parse) {
        subjects.push(format!("key:{prefix}"));
    }
    subjects
}

fn lock_key(subject: &str) -> String {
    format!("authlock:{subject}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A 429 of `class`, counted.
fn refused(class: &'static str, limit: u32, retry_after_secs: u64) -> ApiError {
    crate::metrics::RATE_LIMITED
        .with_label_values(&[class])
        .inc();
    ApiError::RateLimited {
        retry_after_secs,
        limit,
        class,
    }
}

fn locked_out(state: &AppState, retry_after_ms: u64) -> ApiError {
    refused(
        "failed_auth",
        state.settings.rate_limit.failed_auth.limit,
        retry_after_ms.div_ceil(1000).max(1),
    )
}

/// 429 while any of the subjects is locked out by failed authentications, before the
/// credential is even looked at: a guess that happens to be right gets no answer either.
pub async fn refuse_locked_out(state: &AppState, subjects: &[String]) -> Result<(), ApiError> {
    use crate::kv::Cache as _;
    if !state.settings.rate_limit.enabled {
        return Ok(());
    }
    let marks = futures::future::join_all(
        subjects
            .iter()
            .map(|s| async move { state.ephemeral.get(&lock_key(s)).await }),
    )
    .await;
    let now = now_ms();
    let until = marks
        .into_iter()
        .filter_map(|m| m.ok().flatten())
        .filter_map(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
        .max();
    match until {
        Some(until) if until > now => Err(locked_out(state, until - now)),
        _ => Ok(()),
    }
}

/// Counts a failed authentication against each subject. The failure that crosses the limit
/// locks the subject out until its window ends (a mark every node sees), and is itself 429.
pub async fn count_auth_failure(state: &AppState, subjects: &[String]) -> Option<ApiError> {
    use crate::kv::Cache as _;
    if !state.settings.rate_limit.enabled {
        return None;
    }
    let limits = state.settings.rate_limit.failed_auth;
    let window = Duration::from_secs(limits.window_secs);
    let mut refused = None;
    for subject in subjects {
        let decision = match state
            .ephemeral
            .hit(&format!("{subject}:failed_auth"), limits.limit, window)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "failed-authentication counter unavailable");
                continue;
            }
        };
        if !decision.allowed {
            let reset = decision.reset_after.max(Duration::from_secs(1));
            let until = now_ms() + u64::try_from(reset.as_millis()).unwrap_or(u64::MAX);
            if let Err(e) = state
                .ephemeral
                .set(&lock_key(subject), until.to_string().as_bytes(), reset)
                .await
            {
                tracing::warn!(error = %e, "recording an authentication lock-out");
            }
            tracing::warn!(subject, "too many failed authentications: locked out");
            refused = Some(locked_out(
                state,
                u64::try_from(reset.as_millis()).unwrap_or(u64::MAX),
            ));
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn classes() {
        let t = Caller::Tenant {
            tenant_id: uuid::Uuid::nil(),
            key_id: uuid::Uuid::nil(),
            role: Role::Owner,
            member: None,
            expires_at: None,
        };
        assert_eq!(
            RouteClass::classify(&t, &Method::GET, "/api/v1/tenants/x"),
            RouteClass::Standard
        );
        assert_eq!(
            RouteClass::classify(&t, &Method::DELETE, "/api/v1/x"),
            RouteClass::Sensitive
        );
        assert_eq!(
            RouteClass::classify(&t, &Method::POST, "/api/v1/tenants/x/api-keys"),
            RouteClass::Sensitive
        );
        assert_eq!(
            RouteClass::classify(&Caller::Admin, &Method::GET, "/api/v1/tenants"),
            RouteClass::Admin
        );
        assert_eq!(
            RouteClass::classify(
                &Caller::Admin,
                &Method::POST,
                "/api/v1/admin/tenants/x/nuke"
            ),
            RouteClass::Nuclear
        );
    }
}
