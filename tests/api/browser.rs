//! Pages people open, in a real headless Chromium (Debian's `chromium`, driven by its
//! `chromedriver` over WebDriver): what a browser really loads and renders, CSP included.
//! `scripts/test.sh` installs both; a machine without them fails these tests with the fix.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// A headless Chromium session and the chromedriver that drives it.
pub struct Browser {
    client: Client,
    driver: Child,
}

fn find(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    pub async fn start() -> Browser {
        let driver_bin = find(&["chromedriver"]).expect(
            "chromedriver is not installed: run scripts/test.sh (it installs Debian's \
             chromium and chromium-driver) or `apt-get install chromium chromium-driver`",
        );
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"])
            .expect("chromium is not installed (apt-get install chromium)");
        // Port 0: chromedriver picks a free port and says which.
        let mut driver = Command::new(driver_bin)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = driver.stdout.take().expect("chromedriver stdout");
        let port = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
            })
            .expect("chromedriver's port");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // --no-sandbox: the tests may run as root (CI does), where Chromium's sandbox
                // cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run", "--window-size=1280,900"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Browser { client, driver }
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Waits until `script` returns `true` in the page; panics with `what` after `within`.
    pub async fn wait_until(&self, what: &str, script: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.eval(script).await == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the page shows {}",
                self.eval("return document.body ? document.body.innerText.slice(0, 2000) : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

impl TestApp {
    /// A headless Chromium for this app's pages.
    pub async fn browser(&self) -> Browser {
        Browser::start().await
    }
}

/// `/docs` renders the whole API with nothing but this server: the page's scripts and
/// styles come from the binary (no CDN; this machine has no internet), and the document
/// it renders is `/openapi.json`.
#[actix_web::test]
async fn the_docs_page_renders_offline_in_a_browser() {
    let app = spawn_app().await;
    let browser = app.browser().await;
    browser.open(&app.url("/docs")).await;
    browser
        .wait_until(
            "Swagger UI renders the operations",
            "return document.querySelectorAll('.opblock').length > 20",
            Duration::from_secs(30),
        )
        .await;
    let text = browser.eval("return document.body.innerText").await;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.contains("/api/v1/sessions/{session_id}/messages"),
        "{text}"
    );
    // Every resource the page loaded came from this server.
    let origins = browser
        .eval(
            "return performance.getEntriesByType('resource')\
               .map(e => new URL(e.name).origin)",
        )
        .await;
    let origins = origins.as_array().cloned().unwrap_or_default();
    assert!(!origins.is_empty(), "the page loaded its files");
    assert!(
        origins
            .iter()
            .all(|o| o.as_str() == Some(app.address.as_str())),
        "{origins:?}"
    );
    browser.close().await;
}

/// The QR page shows its QR image: its CSP lets the page's own `data:` image through.
#[cfg(feature = "sandbox")]
#[actix_web::test]
async fn the_qr_page_shows_its_qr_image_in_a_browser() {
    let app = spawn_app().await;
    let (_tenant, key) = app.create_tenant("Acme", "standard").await;
    let id = app.new_session(&key, "front desk").await;
    let res = app
        .post_as(&format!("/api/v1/sessions/{id}/start"), &key)
        .await;
    assert_eq!(res.status(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .get_json_as(&format!("/api/v1/sessions/{id}"), &key)
        .await["status"]
        != "qr"
    {
        assert!(tokio::time::Instant::now() < deadline, "no QR");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token: Value = app
        .post("/api/v1/auth/token")
        .json(&json!({ "api_key": key }))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = token["token"].as_str().expect("token");
    let browser = app.browser().await;
    browser
        .open(&app.url(&format!("/api/v1/sessions/{id}/qr/view?token={token}")))
        .await;
    browser
        .wait_until(
            "the QR image is loaded and decoded",
            "const img = document.querySelector('img'); \
             return !!img && img.complete && img.naturalWidth > 100",
            Duration::from_secs(10),
        )
        .await;
    browser.close().await;
}
