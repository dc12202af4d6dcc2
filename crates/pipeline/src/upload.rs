//! `[[uploader]]` at run time: an HTTP client (reqwest + rustls), a concurrency limit shared by
//! every pipeline that uses it, and the classification of answers into success, transient
//! failure (retried) and permanent failure (dead-lettered).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use crate::config::{UploaderConfig, expand_env};

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Uploaded,
    /// Worth retrying: network error, timeout, 408, 429, 5xx.
    Transient(String),
    /// Retrying will not help: other 4xx, redirects.
    Permanent(String),
}

pub struct Uploader {
    pub name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    headers: HeaderMap,
    pub limit: Arc<Semaphore>,
    pub concurrency: usize,
}

impl Uploader {
    /// Builds the client; resolves `${VAR}` in headers from the environment now.
    pub fn new(cfg: &UploaderConfig) -> Result<Uploader, String> {
        let at = |m: String| format!("uploader {:?}: {m}", cfg.name);
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| at(format!("bad url: {e}")))?;
        let method = reqwest::Method::from_bytes(cfg.method.as_bytes())
            .map_err(|e| at(format!("bad method: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let value = expand_env(v.expose(), |k| std::env::var(k).ok())
                .map_err(|e| at(format!("header {k}: {e}")))?;
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| at(format!("header {k}: {e}")))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| at(format!("header {k}: not a valid header value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        // reqwest is built without a bundled crypto provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.get())
            .connect_timeout(cfg.timeout.get().min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.concurrency.max(1))
            .user_agent(concat!("majordomo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| at(format!("cannot build the HTTP client: {e}")))?;
        Ok(Uploader {
            name: cfg.name.clone(),
            client,
            url,
            method,
            headers,
            limit: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            concurrency: cfg.concurrency.max(1),
        })
    }

    /// Sends one item. `key` is its idempotency key, `file` its original name.
    pub async fn send(&self, key: &str, file: &str, body: Vec<u8>) -> Attempt {
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header("Idempotency-Key", key)
            .body(body);
        if let Ok(v) = HeaderValue::from_str(file) {
            req = req.header("X-File-Name", v);
        }
        if !self.headers.contains_key(reqwest::header::CONTENT_TYPE) {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                // Read (and drop) the body so the connection can be reused.
                let _ = resp.bytes().await;
                classify(status.as_u16())
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                // Never the URL: its credentials and query values are secrets.
                Attempt::Transient(format!("{what}: {}", error_chain(&e.without_url())))
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Success, transient or permanent, from the HTTP status.
pub fn classify(status: u16) -> Attempt {
    match status {
        200..=299 => Attempt::Uploaded,
        408 | 429 => Attempt::Transient(format!("server answered {status}")),
        500..=599 => Attempt::Transient(format!("server answered {status}")),
        300..=399 => Attempt::Permanent(format!(
            "server answered {status} (a redirect): fix the uploader's url"
        )),
        400..=499 => Attempt::Permanent(format!("server refused the item with {status}")),
        _ => Attempt::Transient(format!("unexpected status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        assert_eq!(classify(201), Attempt::Uploaded);
        assert!(matches!(classify(408), Attempt::Transient(_)));
        assert!(matches!(classify(429), Attempt::Transient(_)));
        assert!(matches!(classify(503), Attempt::Transient(_)));
        assert!(matches!(classify(400), Attempt::Permanent(_)));
        assert!(matches!(classify(404), Attempt::Permanent(_)));
        assert!(matches!(classify(302), Attempt::Permanent(_)));
    }
}
