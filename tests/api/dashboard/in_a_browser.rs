//! The dashboard in a real headless Chromium, over the sandbox: a member's day (log in, link
//! a session by its QR, a contact writes and is answered, the board) and the admin's tree.
//! Every page is checked with axe-core for serious accessibility violations, at desktop and
//! at 375 px wide, and saved as a screenshot (`target/screenshots/dashboard-*.png`).

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::Locator;
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::key::Key;
use serde_json::{Value, json};

use super::PASSWORD;
use crate::browser::Browser;
use crate::helpers::{ADMIN_KEY, TestApp, spawn_app};

const WAIT: Duration = Duration::from_secs(30);
const CONTACT: &str = "+15550004001";

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots directory");
    dir
}

/// axe-core, from the npm registry (`scripts/test.sh` runs `npm ci` in tests/browser).
fn axe_source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run scripts/test.sh, or `npm ci --prefix tests/browser`",
            path.display()
        )
    })
}

impl Browser {
    async fn click(&self, css: &str) {
        self.wait_until(
            &format!("{css} is there"),
            &format!("return !!document.querySelector({css:?})"),
            WAIT,
        )
        .await;
        self.client()
            .find(Locator::Css(css))
            .await
            .expect(css)
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.client().find(Locator::Css(css)).await.expect(css);
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    async fn shot(&self, name: &str) {
        let png = self.client().screenshot().await.expect("screenshot");
        std::fs::write(screenshots_dir().join(format!("dashboard-{name}.png")), png)
            .expect("write screenshot");
    }

    /// axe-core's serious and critical violations on the page as it is.
    async fn axe_serious(&self) -> Value {
        if self.eval("return typeof window.axe").await != "object" {
            self.eval(&format!("{}\n;return true;", axe_source())).await;
        }
        self
            .client()
            .execute_async(
                "const done = arguments[arguments.length - 1];\
                 axe.run(document, { resultTypes: ['violations'] }).then((r) => done(\
                   r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')\
                     .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)\
                 ), (e) => done(['axe failed: ' + e]));",
                Vec::new(),
            )
            .await
            .expect("axe.run")
    }

    /// Panics listing every serious or critical violation axe-core finds on the page.
    async fn assert_accessible(&self, page: &str) {
        let found = self.axe_serious().await;
        assert_eq!(found, json!([]), "accessibility of the {page} page");
    }

    /// The page at 375 px wide: nothing wider than the screen, and axe again.
    async fn assert_fits_a_phone(&self, page: &str) {
        self.client()
            .set_window_size(375, 812)
            .await
            .expect("narrow window");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let width = self
            .eval("return document.documentElement.scrollWidth")
            .await;
        let inner = self.eval("return window.innerWidth").await;
        assert!(
            width.as_f64() <= inner.as_f64(),
            "the {page} page is {width} px wide on a {inner} px screen"
        );
        self.assert_accessible(&format!("{page} (375 px)")).await;
        self.shot(&format!("{page}-375")).await;
        self.client()
            .set_window_size(1280, 900)
            .await
            .expect("wide window");
    }

    async fn go(&self, app: &TestApp, hash: &str, ready: &str) {
        self.open(&app.url(&format!("/dashboard{hash}"))).await;
        self.wait_until(hash, ready, WAIT).await;
    }

    async fn log_in(&self, app: &TestApp, email: &str) {
        self.open(&app.url("/dashboard")).await;
        self.wait_until(
            "the login form",
            "return !!document.querySelector('form.login input[name=email]')",
            WAIT,
        )
        .await;
        self.type_into("input[name=email]", email).await;
        self.type_into("input[name=password]", PASSWORD).await;
        self.click("form.login button[type=submit]").await;
        self.wait_until(
            "the sessions page after login",
            "return document.querySelector('main h1')?.textContent === 'Sessions'",
            WAIT,
        )
        .await;
    }

    async fn wait_live(&self) {
        self.wait_until(
            "the live connection",
            "return document.querySelector('.live-dot')?.dataset.state === 'live'",
            WAIT,
        )
        .await;
    }

    /// Where a card is drawn: its column's id.
    async fn column_of(&self, card: &str) -> Value {
        self.eval(&format!(
            "const c = document.querySelector('[data-card-id=\"{card}\"]'); \
             return c ? c.closest('.column').dataset.columnId : null"
        ))
        .await
    }
}

async fn card_column(app: &TestApp, key: &str, board: &str, card: &str) -> String {
    app.get_json_as(&format!("/api/v1/boards/{board}/cards/{card}"), key)
        .await["column_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[actix_web::test]
async fn a_members_day_in_the_dashboard_in_a_real_browser() {
    let app = spawn_app().await;
    let (tenant, key) = app.create_tenant("Acme", "standard").await;
    app.create_member(&key, "ana@acme.example", "owner").await;
    let board = app
        .create_board(
            &key,
            json!({"name": "Sales", "columns": ["New", "Talking", "Won"]}),
        )
        .await;
    let board_id = board["id"].as_str().unwrap().to_owned();
    let columns: Vec<String> = board["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let card = app
        .create_card(
            &key,
            &board_id,
            json!({"column_id": columns[0], "title": "Big order"}),
        )
        .await;
    let card_id = card["id"].as_str().unwrap().to_owned();

    let browser = Browser::start().await;
    // 1. Logging in; the login page itself first.
    browser.open(&app.url("/dashboard")).await;
    browser
        .wait_until(
            "the login page",
            "return !!document.querySelector('form.login')",
            WAIT,
        )
        .await;
    // The check finds what it must: an image with no text alternative is a serious violation.
    browser
        .eval(
            "const i = document.createElement('img'); i.id = 'axe-control'; \
             i.src = '/dashboard/assets/favicon.svg'; document.body.append(i); return true",
        )
        .await;
    let found = browser.axe_serious().await;
    assert!(found.to_string().contains("image-alt"), "{found}");
    browser
        .eval("document.getElementById('axe-control').remove(); return true")
        .await;
    browser.assert_accessible("login").await;
    browser.shot("login").await;
    browser.log_in(&app, "ana@acme.example").await;
    browser.wait_live().await;
    // The login cookie is not readable by the page.
    let cookies = browser.eval("return document.cookie").await;
    assert!(
        !cookies.as_str().unwrap().contains("wagate_token"),
        "{cookies}"
    );

    // 2. A session made on the page; its QR shows; a phone scans it; the page sees it
    // connected, live.
    browser
        .type_into("form.inline-form input", "Front desk")
        .await;
    browser.click("form.inline-form button[type=submit]").await;
    browser
        .wait_until(
            "the new session",
            "return !!document.querySelector('article.session')",
            WAIT,
        )
        .await;
    let session = browser
        .eval("return document.querySelector('article.session').dataset.sessionId")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    browser.assert_accessible("sessions").await;
    browser.click("article.session .actions button").await; // Start
    browser
        .wait_until(
            "the QR code, live",
            "const img = document.querySelector('img.qr'); \
             return !!img && img.complete && img.naturalWidth > 100",
            WAIT,
        )
        .await;
    browser.assert_accessible("sessions with a QR").await;
    browser.shot("sessions-qr").await;
    let res = app
        .post(&format!("/api/v1/sandbox/sessions/{session}/scan"))
        .bearer_auth(&key)
        .json(&json!({"phone": "+15550004000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "scan");
    browser
        .wait_until(
            "the session shown connected",
            "return document.querySelector('article.session')?.dataset.status === 'connected'",
            WAIT,
        )
        .await;
    browser.shot("sessions").await;
    browser.assert_fits_a_phone("sessions").await;

    // 3. A contact writes; the chat appears live; its conversation shows the next message
    // live; a reply from the page reaches the contact.
    browser
        .go(
            &app,
            &format!("#/chats/{session}"),
            "return document.querySelector('main h1')?.textContent === 'Chats'",
        )
        .await;
    browser.wait_live().await;
    let res = app
        .sandbox_inbound(&key, &session, CONTACT, "Hello, is the big order ready?")
        .await;
    assert_eq!(res.status(), 202, "inbound");
    browser
        .wait_until(
            "the new chat in the list, with its unread count",
            &format!(
                "const a = document.querySelector('.chat-item[data-chat=\"{CONTACT}\"]'); \
                 return !!a && a.textContent.includes('is the big order ready') \
                   && !!a.querySelector('.unread')"
            ),
            WAIT,
        )
        .await;
    browser
        .click(&format!(".chat-item[data-chat=\"{CONTACT}\"]"))
        .await;
    browser
        .wait_until(
            "the conversation",
            "return [...document.querySelectorAll('.msg.in')].some((m) => m.textContent.includes('big order ready'))",
            WAIT,
        )
        .await;
    let res = app
        .sandbox_inbound(&key, &session, CONTACT, "I can pick it up at five")
        .await;
    assert_eq!(res.status(), 202, "inbound");
    browser
        .wait_until(
            "the second message, live",
            "return [...document.querySelectorAll('.msg.in')].some((m) => m.textContent.includes('pick it up at five'))",
            WAIT,
        )
        .await;
    // Read as it showed: no unread count left on the open chat.
    browser
        .wait_until(
            "the open chat read",
            &format!(
                "const a = document.querySelector('.chat-item[data-chat=\"{CONTACT}\"]'); \
                 return !!a && !a.querySelector('.unread')"
            ),
            WAIT,
        )
        .await;
    browser
        .type_into(".composer textarea", "Yes, it is ready. See you at five!")
        .await;
    browser.click(".composer button[type=submit]").await;
    browser
        .wait_until(
            "the reply in the conversation",
            "return [...document.querySelectorAll('.msg.out')].some((m) => m.textContent.includes('See you at five'))",
            WAIT,
        )
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = app.contact_inbox(&key, CONTACT).await;
        if got.iter().any(|m| {
            m["text"]
                .as_str()
                .is_some_and(|t| t.contains("See you at five"))
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the contact never got the reply: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.assert_accessible("conversation").await;
    browser.shot("conversation").await;
    browser.assert_fits_a_phone("conversation").await;

    // 4. The board: a drag with the pointer moves the card; it stays after a reload.
    browser
        .go(
            &app,
            &format!("#/board/{board_id}"),
            &format!("return !!document.querySelector('[data-card-id=\"{card_id}\"]')"),
        )
        .await;
    browser.wait_live().await;
    let at = |css: String| {
        let browser = &browser;
        async move {
            let r = browser
                .eval(&format!(
                    "const r = document.querySelector({css:?}).getBoundingClientRect(); \
                     return [r.left + r.width / 2, r.top + Math.min(r.height / 2, 60)]"
                ))
                .await;
            (r[0].as_f64().unwrap(), r[1].as_f64().unwrap())
        }
    };
    let (x0, y0) = at(format!("[data-card-id=\"{card_id}\"]")).await;
    let (x1, y1) = at(format!(".column[data-column-id=\"{}\"]", columns[2])).await;
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: x0,
            y: y0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveTo {
            duration: Some(Duration::from_millis(100)),
            x: x0 + 20.0,
            y: y0 + 5.0,
        })
        .then(PointerAction::MoveTo {
            duration: Some(Duration::from_millis(300)),
            x: x1,
            y: y1,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.client().perform_actions(drag).await.expect("drag");
    let deadline = tokio::time::Instant::now() + WAIT;
    while card_column(&app, &key, &board_id, &card_id).await != columns[2] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drag did not move the card"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.client().refresh().await.expect("reload");
    browser
        .wait_until(
            "the card, after a reload",
            &format!("return !!document.querySelector('[data-card-id=\"{card_id}\"]')"),
            WAIT,
        )
        .await;
    assert_eq!(browser.column_of(&card_id).await, json!(columns[2]));
    // Everything the page loaded came from this server; the figures go to the test's output
    // (`--no-capture`): bytes over the wire and the time to a drawn page, on localhost.
    let origins = browser
        .eval("return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)")
        .await;
    assert!(
        origins
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o.as_str() == Some(app.address.as_str())),
        "{origins}"
    );
    let timing = browser
        .eval(
            "const n = performance.getEntriesByType('navigation')[0]; \
             const files = performance.getEntriesByType('resource').filter((e) => e.name.includes('/dashboard/')); \
             const drawn = performance.getEntriesByName('wagate:page-rendered'); \
             return { dom_content_loaded_ms: Math.round(n.domContentLoadedEventEnd), \
                      load_ms: Math.round(n.loadEventEnd), \
                      board_drawn_ms: drawn.length ? Math.round(drawn[drawn.length - 1].startTime) : null, \
                      files: files.length + 1, \
                      decoded_bytes: files.reduce((a, e) => a + e.decodedBodySize, n.decodedBodySize) }",
        )
        .await;
    eprintln!("dashboard board page, reloaded: {timing}");
    assert!(timing["board_drawn_ms"].is_number(), "{timing}");
    browser.assert_accessible("board").await;
    browser.shot("board").await;
    browser.assert_fits_a_phone("board").await;

    // 5. A second browser sees a move made with the keyboard in the first, live.
    let second = Browser::start().await;
    second.log_in(&app, "ana@acme.example").await;
    second
        .go(
            &app,
            &format!("#/board/{board_id}"),
            &format!("return !!document.querySelector('[data-card-id=\"{card_id}\"]')"),
        )
        .await;
    second.wait_live().await;
    assert_eq!(second.column_of(&card_id).await, json!(columns[2]));
    browser
        .eval(&format!(
            "document.querySelector('[data-card-id=\"{card_id}\"]').focus(); return true"
        ))
        .await;
    let card_el = browser
        .client()
        .find(Locator::Css(&format!("[data-card-id=\"{card_id}\"]")))
        .await
        .expect("card");
    card_el.send_keys(" ").await.expect("lift");
    let focused = browser
        .client()
        .find(Locator::Css(&format!("[data-card-id=\"{card_id}\"]")))
        .await
        .expect("card");
    focused
        .send_keys(&String::from(char::from(Key::Left)))
        .await
        .expect("left");
    let focused = browser
        .client()
        .find(Locator::Css(&format!("[data-card-id=\"{card_id}\"]")))
        .await
        .expect("card");
    focused.send_keys(" ").await.expect("drop");
    second
        .wait_until(
            "the move, live in the second browser",
            &format!(
                "const c = document.querySelector('[data-card-id=\"{card_id}\"]'); \
                 return !!c && c.closest('.column').dataset.columnId === '{}'",
                columns[1]
            ),
            WAIT,
        )
        .await;
    assert_eq!(
        card_column(&app, &key, &board_id, &card_id).await,
        columns[1]
    );
    second.close().await;

    // 6. The bell counts an admin's notification, live.
    browser
        .go(
            &app,
            "#/sessions",
            "return document.querySelector('main h1')?.textContent === 'Sessions'",
        )
        .await;
    browser.wait_live().await;
    // The system may have notified already (the tier's session quota is in use): the bell
    // shows what the API counts, and one more after the admin's.
    let before = app
        .get_json_as("/api/v1/notifications/unread-count", &key)
        .await["count"]
        .as_i64()
        .unwrap();
    browser
        .wait_until(
            "the bell showing the unread count",
            &format!("return document.querySelector('.bell-count')?.dataset.count === '{before}'"),
            WAIT,
        )
        .await;
    let res = app
        .post("/api/v1/admin/notifications")
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"tenant_id": tenant, "title": "Maintenance tonight", "body": "From 23:00 to 23:30.", "level": "warning"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "admin notification");
    browser
        .wait_until(
            "the bell counting one more",
            &format!(
                "return document.querySelector('.bell-count')?.dataset.count === '{}'",
                before + 1
            ),
            WAIT,
        )
        .await;
    browser.click("a.bell").await;
    browser
        .wait_until(
            "the notification listed",
            "return document.querySelector('main')?.textContent.includes('Maintenance tonight')",
            WAIT,
        )
        .await;
    browser.assert_accessible("notifications").await;
    browser.shot("notifications").await;

    // 7. The other pages render, pass axe, and are saved.
    for (page, heading) in [
        ("agents", "Agents"),
        ("automation", "Automation"),
        ("webhooks", "Webhooks"),
        ("stats", "Statistics"),
    ] {
        browser
            .go(
                &app,
                &format!("#/{page}"),
                &format!(
                    "return document.querySelector('main h1')?.textContent === '{heading}' \
                     && !document.querySelector('main .loading')"
                ),
            )
            .await;
        browser.assert_accessible(page).await;
        browser.shot(page).await;
    }
    // The chart drew the day's messages (three so far: two in, one out).
    let label = browser
        .eval("return document.querySelector('figure.chart svg')?.getAttribute('aria-label')")
        .await;
    assert!(
        label
            .as_str()
            .unwrap_or_default()
            .contains("2 in and 1 out"),
        "{label}"
    );
    browser.assert_fits_a_phone("stats").await;

    // 8. Logging out ends it: the next load is the login page.
    browser.click("header.top button.link").await;
    browser
        .wait_until(
            "the login page after logging out",
            "return !!document.querySelector('form.login')",
            WAIT,
        )
        .await;
    browser.open(&app.url("/dashboard#/board")).await;
    browser
        .wait_until(
            "still logged out after a reload",
            "return !!document.querySelector('form.login')",
            WAIT,
        )
        .await;

    // 9. The admin: the actor tree, with the session's actor in it; a restart from there.
    browser.click("button[role=tab]:nth-child(2)").await;
    browser.type_into("input[name=api_key]", ADMIN_KEY).await;
    browser.click("form.login button[type=submit]").await;
    browser
        .wait_until(
            "the admin page with the session in the tree",
            &format!(
                "return document.querySelector('main h1')?.textContent === 'Admin' \
                 && document.querySelector('.tree')?.textContent.includes('{}')",
                &session[..8]
            ),
            WAIT,
        )
        .await;
    browser.assert_accessible("admin").await;
    browser.shot("admin").await;
    browser.click(".tree li li li button.link").await;
    browser
        .wait_until(
            "the restart confirmed",
            "return document.getElementById('toasts').textContent.includes('Session restarted')",
            WAIT,
        )
        .await;
    browser.close().await;
}

/// A login that expires while the page is open goes back to the login page and says why;
/// nothing breaks.
#[actix_web::test]
async fn an_expired_login_goes_back_to_the_login_page() {
    let app = crate::helpers::spawn_app_with(|s| s.auth.jwt_ttl_secs = 6).await;
    let (_, key) = app.create_tenant("Acme", "standard").await;
    app.create_member(&key, "ana@acme.example", "owner").await;
    let browser = Browser::start().await;
    browser.log_in(&app, "ana@acme.example").await;
    browser
        .wait_until(
            "the login page, saying the login expired",
            "return !!document.querySelector('form.login') \
             && document.querySelector('form.login .error')?.textContent.includes('expired')",
            Duration::from_secs(30),
        )
        .await;
    // And the API refuses the old cookie, so a reload stays on the login page.
    browser.open(&app.url("/dashboard#/sessions")).await;
    browser
        .wait_until(
            "the login page after a reload",
            "return !!document.querySelector('form.login input[name=email]')",
            WAIT,
        )
        .await;
    browser.close().await;
}
