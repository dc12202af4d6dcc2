//! The dashboard's files, embedded in the binary (plain HTML/CSS/JS, uPlot vendored: no Node at
//! run time and no build step), and the login page.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");

/// `name` → (content type, bytes).
fn file(name: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match name {
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/app.js"),
        ),
        "app.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../assets/app.css"),
        ),
        "uPlot.iife.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/vendor/uPlot.iife.min.js"),
        ),
        "uPlot.min.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../assets/vendor/uPlot.min.css"),
        ),
        _ => return None,
    })
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match file(&name) {
        Some((ct, body)) => (
            [
                (header::CONTENT_TYPE, ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => crate::api::error(StatusCode::NOT_FOUND, "not_found", "no such file"),
    }
}

/// `/assets/vendor/NAME` is the same table.
pub async fn vendor(Path(name): Path<String>) -> Response {
    asset(Path(name)).await
}

pub fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(INDEX)).into_response()
}

pub fn login_page(status: StatusCode, message: &str) -> Response {
    let msg = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>majordomo · log in</title><link rel="stylesheet" href="/assets/app.css"></head>
<body><form class="login" method="post" action="/login">
<h1>majordomo</h1>
<p>Open the link that <code>majordomo run</code> printed, or that <code>majordomo http url</code> prints, or paste a token.</p>
<p class="err" id="error">{msg}</p>
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Log in</button>
</form></body></html>"#
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}
