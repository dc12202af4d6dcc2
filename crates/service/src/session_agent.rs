//! `service install --session-agent`: starts `majordomo session-agent` in each user's desktop
//! session at logon, so the instance's notifications reach the desktop even when the service
//! itself cannot show them (a Windows service in session 0, a system daemon without a session
//! bus). An XDG autostart entry on Linux and the BSDs (`~/.config/autostart`, or
//! `/etc/xdg/autostart` for every user with `--system`), a LaunchAgent on macOS
//! (`~/Library/LaunchAgents`, or `/Library/LaunchAgents`), a Task Scheduler logon task on
//! Windows. The files are recorded in the service's manifest, so `service uninstall` removes them.

use std::path::PathBuf;

use crate::manifest::Manifest;
use crate::{Failure, Scope, Target};

/// The agent's command line: the same instance and scope as the service.
pub fn agent_args(t: &Target) -> Vec<String> {
    let mut args = t.base_args();
    args.push("session-agent".into());
    args
}

/// Quotes one argument of a desktop entry's `Exec` key (the XDG desktop entry spec).
fn exec_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,".contains(c));
    if plain {
        return a.to_string();
    }
    let mut s = String::from("\"");
    for c in a.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            s.push('\\');
        }
        if c == '%' {
            s.push('%');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The XDG autostart entry.
pub fn desktop_entry(t: &Target) -> String {
    let exec: Vec<String> = std::iter::once(t.exe.display().to_string())
        .chain(agent_args(t))
        .map(|a| exec_quote(&a))
        .collect();
    format!(
        "# Written by `majordomo service install --session-agent`.\n\
         [Desktop Entry]\n\
         Type=Application\n\
         Name=majordomo session agent ({i})\n\
         Comment=Shows the notifications of majordomo instance {i} on this desktop\n\
         Exec={exec}\n\
         Terminal=false\n\
         NoDisplay=true\n\
         X-GNOME-Autostart-enabled=true\n",
        i = t.instance,
        exec = exec.join(" ")
    )
}

/// Where the autostart entry goes.
pub fn desktop_entry_path(t: &Target) -> Result<PathBuf, String> {
    let dir = match t.scope {
        Scope::System => PathBuf::from("/etc/xdg/autostart"),
        Scope::User => std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
            .ok_or_else(|| "cannot find the user's home folder (set HOME)".to_string())?
            .join("autostart"),
    };
    Ok(dir.join(format!("majordomo-session-agent-{}.desktop", t.instance)))
}

/// The LaunchAgent label.
pub fn label(instance: &str) -> String {
    format!("org.majordomo.session-agent.{instance}")
}

/// The LaunchAgent: started in each user's GUI (Aqua) session, restarted if it exits.
pub fn launch_agent(t: &Target) -> String {
    let esc = crate::launchd::xml_escape;
    let mut args = String::new();
    for a in std::iter::once(t.exe.display().to_string()).chain(agent_args(t)) {
        args.push_str(&format!("    <string>{}</string>\n", esc(&a)));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- Written by `majordomo service install --session-agent`. -->\n\
         <plist version=\"1.0\">\n<dict>\n\
         \x20 <key>Label</key>\n  <string>{label}</string>\n\
         \x20 <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n\
         \x20 <key>RunAtLoad</key>\n  <true/>\n\
         \x20 <key>KeepAlive</key>\n  <true/>\n\
         \x20 <key>LimitLoadToSessionType</key>\n  <string>Aqua</string>\n\
         </dict>\n</plist>\n",
        label = esc(&label(&t.instance)),
    )
}

pub fn launch_agent_path(t: &Target) -> Result<PathBuf, String> {
    let dir = match t.scope {
        Scope::System => PathBuf::from("/Library/LaunchAgents"),
        Scope::User => dirs::home_dir()
            .map(|h| h.join("Library/LaunchAgents"))
            .ok_or_else(|| "cannot find the user's home folder (set HOME)".to_string())?,
    };
    Ok(dir.join(format!("{}.plist", label(&t.instance))))
}

/// The Task Scheduler logon task's name.
pub fn task_name(instance: &str) -> String {
    format!("majordomo session agent {instance}")
}

/// The logon task: any user's logon (`--system`) or this user's, in their session.
pub fn logon_task_xml(t: &Target) -> String {
    let esc = crate::launchd::xml_escape;
    let args: Vec<String> = agent_args(t)
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect();
    let user = match t.scope {
        Scope::System => String::new(),
        Scope::User => std::env::var("USERNAME")
            .map(|u| format!("<UserId>{}</UserId>", esc(&u)))
            .unwrap_or_default(),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-16\"?>\n\
         <Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">\n\
         \x20 <RegistrationInfo><Description>majordomo session agent: shows the notifications of instance {i} in the user's session (written by `majordomo service install --session-agent`)</Description></RegistrationInfo>\n\
         \x20 <Triggers><LogonTrigger><Enabled>true</Enabled>{user}</LogonTrigger></Triggers>\n\
         \x20 <Principals><Principal id=\"Author\"><GroupId>S-1-5-32-545</GroupId><RunLevel>LeastPrivilege</RunLevel></Principal></Principals>\n\
         \x20 <Settings><MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy><DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries><StopIfGoingOnBatteries>false</StopIfGoingOnBatteries><ExecutionTimeLimit>PT0S</ExecutionTimeLimit><Enabled>true</Enabled></Settings>\n\
         \x20 <Actions Context=\"Author\"><Exec><Command>{exe}</Command><Arguments>{args}</Arguments></Exec></Actions>\n\
         </Task>\n",
        i = esc(&t.instance),
        exe = esc(&t.exe.display().to_string()),
        args = esc(&args.join(" ")),
    )
}

/// Writes (and on Windows registers) the agent's logon start; records it in `m`.
pub fn install(t: &Target, m: &mut Manifest) -> Result<String, Failure> {
    let fail = |e: String| Failure::new(crate::exit::FAILURE, e);
    if cfg!(target_os = "macos") {
        let path = t.staged(&launch_agent_path(t).map_err(fail)?);
        m.write_file(&path, &launch_agent(t), false, false)?;
        return Ok(format!("session agent at logon: {}", path.display()));
    }
    if cfg!(windows) {
        let name = task_name(&t.instance);
        if t.root.is_some() {
            let xml = t.staged(&t.layout.state_dir.join("session-agent-task.xml"));
            m.write_file(&xml, &logon_task_xml(t), false, false)?;
            return Ok(format!("session agent at logon: {}", xml.display()));
        }
        register_task(&name, &logon_task_xml(t)).map_err(fail)?;
        m.extra.push(name.clone());
        return Ok(format!("session agent at logon: scheduled task '{name}'"));
    }
    let path = t.staged(&desktop_entry_path(t).map_err(fail)?);
    m.write_file(&path, &desktop_entry(t), false, false)?;
    Ok(format!("session agent at logon: {}", path.display()))
}

/// Registers the task from its XML (UTF-16 with a byte-order mark, as schtasks expects).
fn register_task(name: &str, xml: &str) -> Result<(), String> {
    let path = std::env::temp_dir().join(format!(
        "majordomo-session-agent.{}.xml",
        std::process::id()
    ));
    let mut bytes = vec![0xFF, 0xFE];
    for u in xml.replace('\n', "\r\n").encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    std::fs::write(&path, bytes)
        .map_err(|e| format!("cannot write the task definition {}: {e}", path.display()))?;
    let mut c = std::process::Command::new("schtasks.exe");
    c.args(["/Create", "/F", "/TN", name, "/XML"]).arg(&path);
    let out = crate::tool::run(c, "schtasks.exe", std::time::Duration::from_secs(30));
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot register the session agent's logon task: `schtasks /Create` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_arguments_are_quoted_by_the_desktop_entry_rules() {
        assert_eq!(exec_quote("--instance"), "--instance");
        assert_eq!(
            exec_quote("/opt/my app/majordomo"),
            "\"/opt/my app/majordomo\""
        );
        assert_eq!(exec_quote("a$b\"c%"), "\"a\\$b\\\"c%%\"");
    }
}
