//! A minimal W3C WebDriver client for Debian's `chromedriver` driving headless
//! `chromium`: enough to load a page, read and click elements, run a script and
//! take a screenshot. The driver runs on a free loopback port and stops on drop.

use crate::{free_port, wait_for, ChildGuard, TempDir};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    base: String,
    session: String,
    agent: ureq::Agent,
    _driver: ChildGuard,
    _profile: TempDir,
}

fn find(binary: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/{binary}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!("no {binary}: `make test` installs Debian's chromium and chromium-driver");
}

impl Browser {
    /// Headless Chromium with no network beyond what the page asks of loopback.
    pub fn start() -> Browser {
        let port = free_port();
        let driver = ChildGuard(
            Command::new(find("chromedriver"))
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver"),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(20), || {
            let mut response = agent.get(format!("{base}/status")).call().ok()?;
            let body: Value =
                serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
            body["value"]["ready"].as_bool().filter(|r| *r)
        });
        let profile = TempDir::new("chromium");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find("chromium"),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1400,1250",
                    format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let mut browser = Browser {
            base,
            session: String::new(),
            agent,
            _driver: driver,
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(capabilities));
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(status < 300, "{method} {path}: {status} {text}");
        value
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({"url": url})));
    }

    /// The first element matching `css`, if any.
    pub fn element(&self, css: &str) -> Option<String> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let mut response = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(json!({"using": "css selector", "value": css}).to_string())
            .ok()?;
        let value: Value =
            serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
        value["value"][ELEMENT].as_str().map(str::to_string)
    }

    /// An element's text, read in one step in the page (the dashboard replaces its
    /// main part every 2 s, which would leave a found element stale).
    pub fn text(&self, css: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            Value::from(css)
        );
        self.script(&script).as_str().map(str::to_string)
    }

    /// A real click; found again if a refresh replaced the element in between.
    pub fn click(&self, css: &str) {
        for _ in 0..10 {
            let id = self
                .element(css)
                .unwrap_or_else(|| panic!("nothing matches {css}"));
            let url = format!("{}/session/{}/element/{id}/click", self.base, self.session);
            let mut response = self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send("{}")
                .expect("chromedriver answers");
            let text = response.body_mut().read_to_string().unwrap_or_default();
            if response.status().is_success() {
                return;
            }
            assert!(text.contains("stale element"), "click {css}: {text}");
        }
        panic!("{css} kept going stale");
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let id = self
            .element(css)
            .unwrap_or_else(|| panic!("nothing matches {css}"));
        self.session_call("POST", &format!("/element/{id}/clear"), None);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session_call("GET", "/screenshot", None);
        base64_decode(encoded.as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots; nothing on bad input.
pub fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_base64() {
        assert_eq!(super::base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::base64_decode("iVBORw=="), b"\x89PNG");
    }
}
