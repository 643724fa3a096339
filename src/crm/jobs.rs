//! Boards that take every new chat of a session: a sweep makes a card for each chat created
//! since the board last looked, in the board's chosen column. Any node may sweep; the unique
//! index on auto cards `(board, session, chat)` makes a second sweep of the same chat a no-op,
//! so a card is made once however many nodes run.

use std::time::Duration;

use chrono::Utc;
use diesel::sql_types;
use diesel::{QueryDsl, SelectableHelper};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::store::{self, CardRow};
use crate::app::AppState;
use crate::events::CARD_CREATED;

/// Chats committed this long after their `created_at` are still found.
const COMMIT_LAG_SECS: i64 = 60;

pub fn schedule(jobs: &mut crate::app::jobs::Jobs, state: &actix_web::web::Data<AppState>) {
    let state = state.clone();
    let every = Duration::from_millis(state.settings.crm.auto_card_interval_ms.max(50));
    jobs.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = %e, "making cards for new chats");
            }
        }
    });
}

#[derive(diesel::QueryableByName)]
struct NewCard {
    #[diesel(sql_type = sql_types::Uuid)]
    id: Uuid,
}

/// One pass over every board that takes new chats.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    let mut conn = state.db.get().await?;
    #[derive(diesel::QueryableByName)]
    struct Due {
        #[diesel(sql_type = sql_types::Uuid)]
        id: Uuid,
    }
    let boards: Vec<Due> = diesel::sql_query(
        "SELECT b.id FROM boards b WHERE b.auto_session_id IS NOT NULL \
           AND b.auto_column_id IS NOT NULL \
           AND EXISTS (SELECT 1 FROM chats ch WHERE ch.session_id = b.auto_session_id \
                       AND ch.created_at >= b.auto_scanned_to - make_interval(secs => $1))",
    )
    .bind::<sql_types::BigInt, _>(COMMIT_LAG_SECS)
    .load(&mut conn)
    .await?;
    let mut made = 0;
    for board in boards {
        let now = Utc::now();
        let events = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                // The board's row serialises sweeps of one board; its column's lock the
                // positions.
                let ids: Vec<NewCard> = diesel::sql_query(
                    "WITH b AS (SELECT * FROM boards WHERE id = $1 FOR UPDATE), \
                     col AS (SELECT c.id FROM board_columns c, b WHERE c.id = b.auto_column_id \
                             FOR UPDATE OF c), \
                     last AS (SELECT coalesce(max(position), 0) AS p FROM cards, col \
                              WHERE cards.column_id = col.id), \
                     fresh AS (SELECT ch.chat, ch.contact_name, ch.created_at, \
                                      row_number() OVER (ORDER BY ch.created_at, ch.chat) AS n \
                               FROM chats ch, b \
                               WHERE ch.session_id = b.auto_session_id \
                                 AND ch.created_at >= b.auto_scanned_to - make_interval(secs => $2) \
                                 AND NOT EXISTS (SELECT 1 FROM cards x WHERE x.board_id = b.id \
                                                 AND x.auto AND x.session_id = ch.session_id \
                                                 AND x.chat = ch.chat) \
                               LIMIT 500), \
                     made AS (INSERT INTO cards (id, tenant_id, board_id, column_id, position, \
                                                 title, session_id, chat, auto) \
                              SELECT gen_random_uuid(), b.tenant_id, b.id, col.id, \
                                     last.p + fresh.n * $3, \
                                     coalesce(nullif(fresh.contact_name, ''), fresh.chat), \
                                     b.auto_session_id, fresh.chat, true \
                              FROM b, col, last, fresh \
                              ON CONFLICT DO NOTHING RETURNING id), \
                     scanned AS (UPDATE boards SET auto_scanned_to = greatest(auto_scanned_to, $4) \
                                 WHERE id = $1 AND (SELECT count(*) FROM fresh) < 500) \
                     SELECT id FROM made",
                )
                .bind::<sql_types::Uuid, _>(board.id)
                .bind::<sql_types::BigInt, _>(COMMIT_LAG_SECS)
                .bind::<sql_types::BigInt, _>(store::GAP)
                .bind::<sql_types::Timestamptz, _>(now - chrono::Duration::seconds(COMMIT_LAG_SECS))
                .load(conn)
                .await?;
                let mut events = Vec::with_capacity(ids.len());
                for NewCard { id } in ids {
                    let card: CardRow = crate::schema::cards::table
                        .find(id)
                        .select(CardRow::as_select())
                        .first(conn)
                        .await?;
                    store::Activity {
                        card: &card,
                        kind: "created",
                        actor: ("system", None),
                        from_column: None,
                        to_column: Some(card.column_id),
                        seconds_in_column: None,
                        data: serde_json::json!({"auto": true}),
                    }
                    .record(conn)
                    .await?;
                    events.push(
                        store::card_event(
                            conn,
                            CARD_CREATED,
                            &card,
                            ("system", None),
                            serde_json::json!({"auto": true}),
                        )
                        .await?,
                    );
                }
                Ok(events)
            })
            .await?;
        made += events.len();
        state.events.publish(events);
    }
    Ok(made)
}
