//! Desktop notifications in the user's session: freedesktop notifications over the D-Bus
//! session bus on Linux and the BSDs, toasts on Windows (WinRT, under an app id), the
//! notification centre on macOS. Through `notify-rust`.

/// How pressing a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Low,
    Normal,
    Critical,
}

/// Shows one notification from `app` (the app name; on Windows also the toast's app id, which
/// must be registered for the toast to show: PowerShell's id is used when it is `None`).
#[cfg(all(unix, not(target_os = "macos")))]
pub async fn show(
    app: &str,
    _app_id: Option<&str>,
    title: &str,
    body: &str,
    urgency: Urgency,
) -> Result<(), String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
    {
        return Err("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set); desktop notifications need a desktop session".into());
    }
    let mut n = notify_rust::Notification::new();
    n.appname(app)
        .summary(title)
        .body(body)
        .urgency(match urgency {
            Urgency::Low => notify_rust::Urgency::Low,
            Urgency::Normal => notify_rust::Urgency::Normal,
            Urgency::Critical => notify_rust::Urgency::Critical,
        });
    n.show_async()
        .await
        .map(|_| ())
        .map_err(|e| format!("desktop notification failed: {e}"))
}

#[cfg(not(all(unix, not(target_os = "macos"))))]
pub async fn show(
    app: &str,
    app_id: Option<&str>,
    title: &str,
    body: &str,
    urgency: Urgency,
) -> Result<(), String> {
    let (app, title, body) = (app.to_string(), title.to_string(), body.to_string());
    let app_id = app_id.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut n = notify_rust::Notification::new();
        n.appname(&app).summary(&title).body(&body);
        #[cfg(windows)]
        {
            if let Some(id) = &app_id {
                n.app_id(id);
            }
            n.urgency(match urgency {
                Urgency::Low => notify_rust::Urgency::Low,
                Urgency::Normal => notify_rust::Urgency::Normal,
                Urgency::Critical => notify_rust::Urgency::Critical,
            });
        }
        #[cfg(not(windows))]
        let _ = (&app_id, urgency);
        n.show()
            .map(|_| ())
            .map_err(|e| format!("desktop notification failed: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}
