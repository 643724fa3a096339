//! The statistics' SQL. Message figures come from the rollup (`stat_buckets` plus the deltas
//! not yet folded into it, see migration `2026-12-04-000018_stats`), never from a scan of
//! `messages`; the rest reads small tables by indexed tenant and time.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The rollup's rows of one tenant (or every tenant: `NULL`) and period, folded or not.
const ROLLUP: &str = "( \
  SELECT tenant_id, session_id, bucket, msgs_in, msgs_out, msgs_out_bot, msgs_failed, \
         msgs_delivered, msgs_read, responses_human, response_ms_human, responses_bot, \
         response_ms_bot \
  FROM stat_buckets WHERE ($1::uuid IS NULL OR tenant_id = $1) AND bucket >= $2 AND bucket < $3 \
  UNION ALL \
  SELECT tenant_id, session_id, bucket, msgs_in, msgs_out, msgs_out_bot, msgs_failed, \
         msgs_delivered, msgs_read, responses_human, response_ms_human, responses_bot, \
         response_ms_bot \
  FROM stat_deltas WHERE ($1::uuid IS NULL OR tenant_id = $1) AND bucket >= $2 AND bucket < $3 \
) r";

/// Message figures over a period.
#[derive(Debug, Default, Clone, QueryableByName)]
pub struct MessageTotals {
    #[diesel(sql_type = BigInt)]
    pub msgs_in: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_out: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_out_bot: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_failed: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_delivered: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_read: i64,
    #[diesel(sql_type = BigInt)]
    pub responses_human: i64,
    #[diesel(sql_type = BigInt)]
    pub response_ms_human: i64,
    #[diesel(sql_type = BigInt)]
    pub responses_bot: i64,
    #[diesel(sql_type = BigInt)]
    pub response_ms_bot: i64,
}

const SUMS: &str = "coalesce(sum(msgs_in), 0)::bigint AS msgs_in, \
  coalesce(sum(msgs_out), 0)::bigint AS msgs_out, \
  coalesce(sum(msgs_out_bot), 0)::bigint AS msgs_out_bot, \
  coalesce(sum(msgs_failed), 0)::bigint AS msgs_failed, \
  coalesce(sum(msgs_delivered), 0)::bigint AS msgs_delivered, \
  coalesce(sum(msgs_read), 0)::bigint AS msgs_read, \
  coalesce(sum(responses_human), 0)::bigint AS responses_human, \
  coalesce(sum(response_ms_human), 0)::bigint AS response_ms_human, \
  coalesce(sum(responses_bot), 0)::bigint AS responses_bot, \
  coalesce(sum(response_ms_bot), 0)::bigint AS response_ms_bot";

/// A period's message figures of one tenant (`None`: the whole system), optionally of one
/// session.
pub async fn message_totals(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    session: Option<Uuid>,
) -> diesel::QueryResult<MessageTotals> {
    diesel::sql_query(format!(
        "SELECT {SUMS} FROM {ROLLUP} WHERE ($4::uuid IS NULL OR session_id = $4)"
    ))
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .bind::<Nullable<SqlUuid>, _>(session)
    .get_result(conn)
    .await
}

/// One point of a time series: the local hour or day starting `at`.
#[derive(Debug, Clone, QueryableByName)]
pub struct SeriesPoint {
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    #[diesel(embed)]
    pub totals: MessageTotals,
}

/// Every local `interval` (`hour` or `day`, in `zone`) from the one holding `from` until
/// `to`, empty ones included (a chart needs its zeros). Quarter-hour buckets regroup exactly
/// into the local hours of any zone. Days are calendar days (23 or 25 hours across a
/// daylight-saving change); hours are real hours counted from a local hour's start, so the
/// hour a clock repeats in autumn is two points, not one.
pub async fn message_series(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: &str,
    zone: &str,
    session: Option<Uuid>,
) -> diesel::QueryResult<Vec<SeriesPoint>> {
    let (points, point_of_bucket) = if interval == "day" {
        (
            "SELECT p AT TIME ZONE $6 AS at \
             FROM generate_series(date_trunc('day', $2 AT TIME ZONE $6), \
                                  ($3 - interval '1 microsecond') AT TIME ZONE $6, \
                                  interval '1 day') p",
            "date_trunc('day', bucket AT TIME ZONE $6) AT TIME ZONE $6",
        )
    } else {
        (
            "SELECT generate_series(o.origin, $3 - interval '1 microsecond', interval '1 hour') AS at \
             FROM origin o",
            "date_bin('1 hour', bucket, (SELECT origin FROM origin))",
        )
    };
    diesel::sql_query(format!(
        "WITH origin AS (SELECT date_trunc('hour', $2 AT TIME ZONE $6) AT TIME ZONE $6 AS origin \
                         WHERE $5 = $5), \
         points AS ({points}), \
         sums AS ( \
           SELECT {point_of_bucket} AS at, {SUMS} \
           FROM {ROLLUP} WHERE ($4::uuid IS NULL OR session_id = $4) GROUP BY 1) \
         SELECT p.at, coalesce(s.msgs_in, 0) AS msgs_in, coalesce(s.msgs_out, 0) AS msgs_out, \
           coalesce(s.msgs_out_bot, 0) AS msgs_out_bot, coalesce(s.msgs_failed, 0) AS msgs_failed, \
           coalesce(s.msgs_delivered, 0) AS msgs_delivered, coalesce(s.msgs_read, 0) AS msgs_read, \
           coalesce(s.responses_human, 0) AS responses_human, \
           coalesce(s.response_ms_human, 0) AS response_ms_human, \
           coalesce(s.responses_bot, 0) AS responses_bot, \
           coalesce(s.response_ms_bot, 0) AS response_ms_bot \
         FROM points p LEFT JOIN sums s ON s.at = p.at ORDER BY p.at"
    ))
    .bind::<Nullable<SqlUuid>, _>(Some(tenant))
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .bind::<Nullable<SqlUuid>, _>(session)
    .bind::<Text, _>(interval)
    .bind::<Text, _>(zone)
    .load(conn)
    .await
}

/// What the agents did over a period, per agent.
#[derive(Debug, Clone, QueryableByName)]
pub struct AgentFigures {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub agent_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub model: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub replies: i64,
    #[diesel(sql_type = BigInt)]
    pub fallbacks: i64,
    #[diesel(sql_type = BigInt)]
    pub errors: i64,
    /// Chats the agent answered or handed over.
    #[diesel(sql_type = BigInt)]
    pub conversations: i64,
    /// Of those, chats it handed over to a person.
    #[diesel(sql_type = BigInt)]
    pub handed_off: i64,
    #[diesel(sql_type = BigInt)]
    pub prompt_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub avg_latency_ms: Option<i64>,
}

/// `tenant` `None`: every tenant's agents together (the system's figures, one row).
pub async fn agent_figures(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> diesel::QueryResult<Vec<AgentFigures>> {
    let by_agent = tenant.is_some();
    let (key, join, name, model) = if by_agent {
        (
            "k.agent_id",
            "LEFT JOIN ai_agents a ON a.id = k.agent_id",
            "max(a.name)",
            "coalesce(max(k.model), max(a.model))",
        )
    } else {
        ("NULL::uuid", "", "NULL::text", "NULL::text")
    };
    diesel::sql_query(format!(
        "SELECT {key} AS agent_id, {name} AS name, {model} AS model, \
           count(*) FILTER (WHERE k.kind = 'reply' AND k.error IS NULL) AS replies, \
           count(*) FILTER (WHERE k.kind = 'fallback') AS fallbacks, \
           count(*) FILTER (WHERE k.error IS NOT NULL AND k.kind <> 'fallback') AS errors, \
           count(DISTINCT (k.session_id, k.chat)) FILTER (WHERE k.kind IN ('reply', 'fallback', 'handoff') \
             AND k.chat IS NOT NULL) AS conversations, \
           count(DISTINCT (k.session_id, k.chat)) FILTER (WHERE k.kind = 'handoff') AS handed_off, \
           coalesce(sum(k.prompt_tokens), 0)::bigint AS prompt_tokens, \
           coalesce(sum(k.output_tokens), 0)::bigint AS output_tokens, \
           avg(k.latency_ms) FILTER (WHERE k.latency_ms IS NOT NULL AND NOT k.cached)::bigint AS avg_latency_ms \
         FROM ai_calls k {join} \
         WHERE ($1::uuid IS NULL OR k.tenant_id = $1) AND k.created_at >= $2 AND k.created_at < $3 \
         GROUP BY 1 ORDER BY 4 DESC, 1"
    ))
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}

/// A tenant's (or the system's) tokens by model over a period, for cost estimates.
#[derive(Debug, Clone, QueryableByName)]
pub struct ModelTokens {
    #[diesel(sql_type = Nullable<Text>)]
    pub model: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub prompt_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
}

pub async fn tokens_by_model(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> diesel::QueryResult<Vec<ModelTokens>> {
    diesel::sql_query(
        "SELECT coalesce(k.model, a.model) AS model, \
           coalesce(sum(k.prompt_tokens), 0)::bigint AS prompt_tokens, \
           coalesce(sum(k.output_tokens), 0)::bigint AS output_tokens \
         FROM ai_calls k LEFT JOIN ai_agents a ON a.id = k.agent_id \
         WHERE ($1::uuid IS NULL OR k.tenant_id = $1) AND k.created_at >= $2 AND k.created_at < $3 \
         GROUP BY 1",
    )
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}

#[derive(Debug, Clone, QueryableByName)]
pub struct Counted {
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Tenants by tier.
pub async fn tenants_by_tier(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Counted>> {
    diesel::sql_query("SELECT tier AS key, count(*) AS n FROM tenants GROUP BY 1 ORDER BY 1")
        .load(conn)
        .await
}

/// Sessions by status.
pub async fn sessions_by_status(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
) -> diesel::QueryResult<Vec<Counted>> {
    diesel::sql_query(
        "SELECT status AS key, count(*) AS n FROM sessions \
         WHERE ($1::uuid IS NULL OR tenant_id = $1) GROUP BY 1 ORDER BY 1",
    )
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .load(conn)
    .await
}

/// Webhook deliveries made over a period, by status (`pending`, `delivered`, `dead`).
pub async fn webhook_deliveries(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> diesel::QueryResult<Vec<Counted>> {
    diesel::sql_query(
        "SELECT status AS key, count(*) AS n FROM webhook_deliveries \
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND created_at >= $2 AND created_at < $3 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}

#[derive(Debug, Clone, QueryableByName)]
pub struct One {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Chats with a message since `since`.
pub async fn active_chats(
    conn: &mut AsyncPgConnection,
    tenant: Option<Uuid>,
    since: DateTime<Utc>,
) -> diesel::QueryResult<i64> {
    let one: One = diesel::sql_query(
        "SELECT count(*) AS n FROM chats \
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND last_message_at >= $2",
    )
    .bind::<Nullable<SqlUuid>, _>(tenant)
    .bind::<Timestamptz, _>(since)
    .get_result(conn)
    .await?;
    Ok(one.n)
}

/// Cards in each column of each board.
#[derive(Debug, Clone, QueryableByName)]
pub struct ColumnCards {
    #[diesel(sql_type = SqlUuid)]
    pub board_id: Uuid,
    #[diesel(sql_type = Text)]
    pub board: String,
    #[diesel(sql_type = SqlUuid)]
    pub column_id: Uuid,
    #[diesel(sql_type = Text)]
    pub column: String,
    #[diesel(sql_type = BigInt)]
    pub cards: i64,
}

pub async fn cards_per_column(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
) -> diesel::QueryResult<Vec<ColumnCards>> {
    diesel::sql_query(
        "SELECT b.id AS board_id, b.name AS board, c.id AS column_id, c.name AS column, \
           (SELECT count(*) FROM cards k WHERE k.column_id = c.id) AS cards \
         FROM boards b JOIN board_columns c ON c.board_id = b.id \
         WHERE b.tenant_id = $1 ORDER BY b.created_at, b.id, c.position, c.id",
    )
    .bind::<SqlUuid, _>(tenant)
    .load(conn)
    .await
}

/// What happened in the last `secs` seconds, read from the messages themselves (by session
/// and time: the index the chat history uses).
#[derive(Debug, Clone, QueryableByName)]
pub struct Recent {
    #[diesel(sql_type = BigInt)]
    pub msgs_in: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_out: i64,
    #[diesel(sql_type = BigInt)]
    pub msgs_failed: i64,
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    #[diesel(sql_type = BigInt)]
    pub ai_calls: i64,
    #[diesel(sql_type = BigInt)]
    pub ai_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub events: i64,
    #[diesel(sql_type = BigInt)]
    pub chats: i64,
}

pub async fn recent(
    conn: &mut AsyncPgConnection,
    tenant: Uuid,
    secs: i64,
) -> diesel::QueryResult<Recent> {
    diesel::sql_query(
        "WITH m AS ( \
           SELECT m.direction, m.status, m.chat, m.session_id FROM sessions s \
           JOIN messages m ON m.session_id = s.id \
           WHERE s.tenant_id = $1 AND m.created_at >= now() - make_interval(secs => $2)) \
         SELECT (SELECT count(*) FROM m WHERE direction = 'in') AS msgs_in, \
           (SELECT count(*) FROM m WHERE direction = 'out') AS msgs_out, \
           (SELECT count(*) FROM m WHERE direction = 'out' AND status = 'failed') AS msgs_failed, \
           (SELECT count(*) FROM messages q WHERE q.tenant_id = $1 AND q.status = 'queued') AS queued, \
           (SELECT count(*) FROM ai_calls k WHERE k.tenant_id = $1 \
              AND k.created_at >= now() - make_interval(secs => $2)) AS ai_calls, \
           (SELECT coalesce(sum(k.prompt_tokens + k.output_tokens), 0)::bigint FROM ai_calls k \
              WHERE k.tenant_id = $1 AND k.created_at >= now() - make_interval(secs => $2)) AS ai_tokens, \
           (SELECT count(*) FROM events e WHERE e.tenant_id = $1 AND e.id > coalesce( \
              (SELECT o.id FROM events o WHERE o.tenant_id = $1 \
                 AND o.at < now() - make_interval(secs => $2) ORDER BY o.id DESC LIMIT 1), 0)) \
              AS events, \
           (SELECT count(DISTINCT (session_id, chat)) FROM m) AS chats",
    )
    .bind::<SqlUuid, _>(tenant)
    .bind::<diesel::sql_types::Double, _>(secs as f64)
    .get_result(conn)
    .await
}

/// Folds up to `limit` deltas into the rollup; returns how many it folded. Any node may run
/// it at any time: the deltas it takes are locked (`SKIP LOCKED`: another node takes others)
/// and deleted in the transaction that adds them to the buckets.
pub async fn fold(conn: &mut AsyncPgConnection, limit: i64) -> diesel::QueryResult<i64> {
    let one: One = diesel::sql_query(
        "WITH taken AS ( \
           DELETE FROM stat_deltas WHERE id IN ( \
             SELECT id FROM stat_deltas ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
           RETURNING *), \
         folded AS ( \
           INSERT INTO stat_buckets (tenant_id, session_id, bucket, msgs_in, msgs_out, \
             msgs_out_bot, msgs_failed, msgs_delivered, msgs_read, responses_human, \
             response_ms_human, responses_bot, response_ms_bot) \
           SELECT t.tenant_id, t.session_id, t.bucket, sum(t.msgs_in), sum(t.msgs_out), \
             sum(t.msgs_out_bot), sum(t.msgs_failed), sum(t.msgs_delivered), sum(t.msgs_read), \
             sum(t.responses_human), sum(t.response_ms_human), sum(t.responses_bot), \
             sum(t.response_ms_bot) \
           FROM taken t JOIN tenants ON tenants.id = t.tenant_id \
           GROUP BY 1, 3, 2 ORDER BY 1, 3, 2 \
           ON CONFLICT (tenant_id, bucket, session_id) DO UPDATE SET \
             msgs_in = stat_buckets.msgs_in + EXCLUDED.msgs_in, \
             msgs_out = stat_buckets.msgs_out + EXCLUDED.msgs_out, \
             msgs_out_bot = stat_buckets.msgs_out_bot + EXCLUDED.msgs_out_bot, \
             msgs_failed = stat_buckets.msgs_failed + EXCLUDED.msgs_failed, \
             msgs_delivered = stat_buckets.msgs_delivered + EXCLUDED.msgs_delivered, \
             msgs_read = stat_buckets.msgs_read + EXCLUDED.msgs_read, \
             responses_human = stat_buckets.responses_human + EXCLUDED.responses_human, \
             response_ms_human = stat_buckets.response_ms_human + EXCLUDED.response_ms_human, \
             responses_bot = stat_buckets.responses_bot + EXCLUDED.responses_bot, \
             response_ms_bot = stat_buckets.response_ms_bot + EXCLUDED.response_ms_bot \
           RETURNING 1) \
         SELECT count(*) AS n FROM taken",
    )
    .bind::<BigInt, _>(limit)
    .get_result(conn)
    .await?;
    Ok(one.n)
}

/// Waits of chats whose session is gone, or older than `days`, are dropped: no answer will
/// ever be counted for them.
pub async fn forget_stale_waits(
    conn: &mut AsyncPgConnection,
    days: i64,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM chat_waits w WHERE w.since < now() - make_interval(days => $1::int) \
           OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = w.session_id)",
    )
    .bind::<BigInt, _>(days)
    .execute(conn)
    .await
}
