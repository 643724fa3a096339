//! Rate limits per tenant (or client IP, before authentication) and route class, as seed 000
//! describes: a generous standard class, a stricter one for destructive routes, one for the
//! admin, a very strict one for "nuclear" operations, and one for trading keys for tokens.

use std::time::Duration;

use actix_web::http::Method;

use crate::auth::Caller;
use crate::configuration::LimitSettings;
use crate::error::ApiError;
use crate::kv::{Decision, RateLimiter};
use crate::startup::AppState;

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
        crate::metrics::RATE_LIMITED
            .with_label_values(&[class.as_str()])
            .inc();
        return Err(ApiError::RateLimited {
            retry_after_secs: decision.reset_after.as_secs().max(1),
            limit: decision.limit,
            class: class.as_str(),
        });
    }
    Ok(Some(decision))
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
