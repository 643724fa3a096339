//! List conventions: `?limit=` (default 50, max 500) and an opaque `?cursor=`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50). Parsed here so a bad value names the field.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A `?limit=` value: default 50, 1 to 500, a bad value names the field.
pub fn parse_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    let limit = match raw {
        None => DEFAULT_LIMIT,
        Some(raw) => raw.parse::<u32>().map_err(|_| {
            ApiError::validation(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}"),
            )
        })?,
    };
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

/// A position in a newest-first listing ordered by a time and a tie-breaking key:
/// `<microseconds>_<key>` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeCursor {
    pub at: chrono::DateTime<chrono::Utc>,
    pub key: String,
}

impl TimeCursor {
    pub fn encode(at: chrono::DateTime<chrono::Utc>, key: impl std::fmt::Display) -> String {
        format!("{}_{}", at.timestamp_micros(), key)
    }

    /// `?cursor=` as given back by this API; anything else is a 400 on `cursor`.
    pub fn parse(raw: Option<&str>) -> Result<Option<TimeCursor>, ApiError> {
        let Some(raw) = raw else { return Ok(None) };
        raw.split_once('_')
            .and_then(|(micros, key)| {
                Some(TimeCursor {
                    at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
                    key: key.to_owned(),
                })
            })
            .filter(|c| !c.key.is_empty())
            .map(Some)
            .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this API"))
    }
}

impl ListQuery {
    /// The page size and the id to continue after.
    pub fn parse(&self) -> Result<(u32, Option<Uuid>), ApiError> {
        let limit = parse_limit(self.limit.as_deref())?;
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(
                Uuid::parse_str(c)
                    .map_err(|_| ApiError::validation("cursor", "is not a cursor from this API"))?,
            ),
        };
        Ok((limit, after))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The same page with each item shown differently.
    pub fn map<U>(self, f: impl FnMut(&T) -> U) -> Page<U> {
        Page {
            items: self.items.iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }

    /// The same page with each item shown differently, where showing it may fail.
    pub fn try_map<U, E>(self, f: impl FnMut(&T) -> Result<U, E>) -> Result<Page<U>, E> {
        Ok(Page {
            items: self.items.iter().map(f).collect::<Result<_, E>>()?,
            next_cursor: self.next_cursor,
        })
    }

    /// Builds a page from `limit + 1` fetched rows: the extra row only says another page exists.
    pub fn from_overfetched(
        mut items: Vec<T>,
        limit: u32,
        cursor_of: impl Fn(&T) -> String,
    ) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(cursor_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}
