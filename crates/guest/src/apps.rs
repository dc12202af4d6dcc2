//! `guest.apps`: the installed applications as a user sees them (seed 003), which on Linux is
//! not the package list. Windows: the Uninstall keys of the registry (machine, its 32-bit view
//! `WOW6432Node`, and the user's); Linux: the XDG desktop entries (`applications/*.desktop`
//! under `$XDG_DATA_HOME` and `$XDG_DATA_DIRS`), flatpak and snap through their own tools when
//! present; macOS: the bundles in /Applications and ~/Applications.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use majordomo_proto::guest::{App, AppsArgs};
use majordomo_proto::{ErrorBody, ErrorCode};

/// The installed applications whose name matches `args.name` (case-insensitive), by name.
pub async fn apps(args: &AppsArgs) -> Result<Vec<App>, ErrorBody> {
    let pattern = args
        .name
        .as_deref()
        .map(|p| glob::Pattern::new(&p.to_lowercase()))
        .transpose()
        .map_err(|e| {
            ErrorBody::new(
                ErrorCode::BadRequest,
                format!("name: {e}; use an application name with * and ? as wildcards"),
            )
        })?;
    let mut all = tokio::task::spawn_blocking(list)
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("listing applications: {e}")))?;
    all.extend(tool_apps().await);
    all.retain(|a| {
        pattern
            .as_ref()
            .is_none_or(|p| p.matches(&a.name.to_lowercase()))
    });
    all.sort_by(|a, b| {
        a.name
            .to_lowercase()
            .cmp(&b.name.to_lowercase())
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(all)
}

/// What the OS's own records say (no tool run).
fn list() -> Vec<App> {
    #[cfg(windows)]
    {
        windows_apps()
    }
    #[cfg(target_os = "macos")]
    {
        let mut dirs = vec![PathBuf::from("/Applications")];
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(PathBuf::from(home).join("Applications"));
        }
        dirs.iter().flat_map(|d| bundles(d)).collect()
    }
    #[cfg(not(any(windows, target_os = "macos")))]
    {
        desktop_entries(&data_dirs(), skip_exported())
    }
}

/// flatpak and snap applications, through their tools (they know the versions).
async fn tool_apps() -> Vec<App> {
    let mut out = Vec::new();
    if cfg!(target_os = "linux") && crate::manage::on_path("flatpak") {
        let t = crate::manage::tool(
            "flatpak",
            &["list", "--app", "--columns=application,name,version,origin"],
            &[],
        )
        .await
        .unwrap_or_default();
        out.extend(t.lines().filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let id = f.first()?.trim();
            (!id.is_empty()).then(|| App {
                name: f.get(1).map_or(id, |n| n.trim()).into(),
                version: f.get(2).unwrap_or(&"").trim().into(),
                publisher: f.get(3).unwrap_or(&"").trim().into(),
                source: "flatpak".into(),
                id: id.into(),
            })
        }));
    }
    if cfg!(target_os = "linux") && crate::manage::on_path("snap") {
        let t = crate::manage::tool("snap", &["list"], &[])
            .await
            .unwrap_or_default();
        // Name  Version  Rev  Tracking  Publisher  Notes
        out.extend(t.lines().skip(1).filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(App {
                name: (*f.first()?).into(),
                version: f.get(1).unwrap_or(&"").to_string(),
                publisher: f.get(4).unwrap_or(&"").trim_end_matches('✓').into(),
                source: "snap".into(),
                id: (*f.first()?).into(),
            })
        }));
    }
    out
}

#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
/// The XDG data directories, most important first: `$XDG_DATA_HOME` (default
/// ~/.local/share), then `$XDG_DATA_DIRS` (default /usr/local/share:/usr/share), then where
/// flatpak and snap export their entries.
pub fn data_dirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut dirs = Vec::new();
    match env("XDG_DATA_HOME") {
        Some(d) => dirs.push(PathBuf::from(d)),
        None => {
            if let Some(h) = env("HOME") {
                dirs.push(PathBuf::from(h).join(".local/share"));
            }
        }
    }
    match env("XDG_DATA_DIRS") {
        Some(d) => dirs.extend(std::env::split_paths(&d)),
        None => dirs.extend(["/usr/local/share", "/usr/share"].map(PathBuf::from)),
    }
    for d in [FLATPAK_EXPORTS, SNAP_EXPORTS] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
const FLATPAK_EXPORTS: &str = "/var/lib/flatpak/exports/share";
#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
const SNAP_EXPORTS: &str = "/var/lib/snapd/desktop";

#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
/// The export directories whose tool lists them instead (with versions).
fn skip_exported() -> Vec<PathBuf> {
    let mut skip = Vec::new();
    if crate::manage::on_path("flatpak") {
        skip.push(PathBuf::from(FLATPAK_EXPORTS));
    }
    if crate::manage::on_path("snap") {
        skip.push(PathBuf::from(SNAP_EXPORTS));
    }
    skip
}

#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
/// The applications of the desktop entries under `dirs` (`<dir>/applications/**.desktop`,
/// one level of subfolders): the first entry of an id wins, as the XDG spec says; hidden ones
/// (`NoDisplay`, `Hidden`) and non-applications are left out.
pub fn desktop_entries(dirs: &[PathBuf], skip: Vec<PathBuf>) -> Vec<App> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in dirs {
        if skip.contains(dir) {
            continue;
        }
        let root = dir.join("applications");
        let source =
            if dir.starts_with(FLATPAK_EXPORTS) || dir.to_string_lossy().contains("flatpak") {
                "flatpak"
            } else if dir.starts_with(SNAP_EXPORTS) {
                "snap"
            } else {
                "desktop"
            };
        let mut files = Vec::new();
        collect_desktop_files(&root, &root, 0, &mut files);
        files.sort();
        for (id, path) in files {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if let Some(name) = desktop_app_name(&text) {
                out.push(App {
                    name,
                    version: String::new(),
                    publisher: String::new(),
                    source: source.into(),
                    id: path.display().to_string(),
                });
            }
        }
    }
    out
}

#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
/// `(desktop file id, path)` of each `.desktop` under `dir` (id: the relative path with `/`
/// turned into `-`, as the spec says).
fn collect_desktop_files(root: &Path, dir: &Path, depth: u8, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth < 1 {
            collect_desktop_files(root, &p, depth + 1, out);
        } else if p.extension().is_some_and(|x| x == "desktop")
            && let Ok(rel) = p.strip_prefix(root)
        {
            let id = rel.to_string_lossy().replace(['/', '\\'], "-");
            out.push((id, p));
        }
    }
}

#[cfg_attr(any(windows, target_os = "macos"), allow(dead_code))]
/// The `Name` of a desktop entry's `[Desktop Entry]` group, if it is a shown application.
pub fn desktop_app_name(text: &str) -> Option<String> {
    let mut in_entry = false;
    let (mut name, mut app, mut hidden) = (None, false, false);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_entry = line == "[Desktop Entry]";
            continue;
        }
        if !in_entry {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match (k.trim(), v.trim()) {
            ("Name", v) => name = Some(v.to_string()),
            ("Type", v) => app = v == "Application",
            ("NoDisplay" | "Hidden", "true") => hidden = true,
            _ => {}
        }
    }
    name.filter(|n| app && !hidden && !n.is_empty())
}

#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
/// The `.app` bundles directly in `dir` (macOS): name and version from an XML Info.plist
/// (`CFBundleName`, `CFBundleShortVersionString`), else the folder's name.
pub fn bundles(dir: &Path) -> Vec<App> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "app") {
            continue;
        }
        let plist = std::fs::read_to_string(p.join("Contents/Info.plist")).unwrap_or_default();
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(App {
            name: plist_string(&plist, "CFBundleName").unwrap_or(stem),
            version: plist_string(&plist, "CFBundleShortVersionString").unwrap_or_default(),
            publisher: String::new(),
            source: "bundle".into(),
            id: p.display().to_string(),
        });
    }
    out
}

#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
/// The string after `<key>KEY</key>` in an XML property list.
fn plist_string(xml: &str, key: &str) -> Option<String> {
    let at = xml.find(&format!("<key>{key}</key>"))?;
    let rest = &xml[at..];
    let start = rest.find("<string>")? + "<string>".len();
    let end = rest[start..].find("</string>")?;
    let v = rest[start..start + end].trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// The Uninstall keys: machine-wide, its 32-bit view, and the user's.
#[cfg(windows)]
fn windows_apps() -> Vec<App> {
    use majordomo_platform::winreg::{Hive, string_value, subkeys};
    const KEYS: [(Hive, &str, &str); 3] = [
        (
            Hive::LocalMachine,
            r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall",
            "registry",
        ),
        (
            Hive::LocalMachine,
            r"SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall",
            "registry-wow64",
        ),
        (
            Hive::CurrentUser,
            r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall",
            "registry-user",
        ),
    ];
    let mut out = Vec::new();
    for (hive, path, source) in KEYS {
        for key in subkeys(hive, path).unwrap_or_default() {
            let sub = format!(r"{path}\{key}");
            let get = |v: &str| string_value(hive, &sub, v).unwrap_or_default();
            let name = get("DisplayName");
            // No name: an update or component, not shown in "Apps"; likewise system components.
            if name.is_empty() || string_value(hive, &sub, "SystemComponent").is_some() {
                continue;
            }
            out.push(App {
                name,
                version: get("DisplayVersion"),
                publisher: get("Publisher"),
                source: source.into(),
                id: key,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktop_entries_follow_the_spec() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for (dir, file, text) in [
            (
                &a,
                "editor.desktop",
                "[Desktop Entry]\nType=Application\nName=Editor\nName[fr]=Éditeur\n",
            ),
            (
                &a,
                "hidden.desktop",
                "[Desktop Entry]\nType=Application\nName=Hidden\nNoDisplay=true\n",
            ),
            (
                &a,
                "link.desktop",
                "[Desktop Entry]\nType=Link\nName=Link\n",
            ),
            (
                &b,
                "editor.desktop",
                "[Desktop Entry]\nType=Application\nName=Shadowed\n",
            ),
            (
                &b,
                "kde/viewer.desktop",
                "[Desktop Entry]\nName=Viewer\nType=Application\n[Desktop Action x]\nName=Other\n",
            ),
        ] {
            let p = dir.join("applications").join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let mut names: Vec<String> = desktop_entries(&[a, b], Vec::new())
            .into_iter()
            .map(|x| x.name)
            .collect();
        names.sort();
        assert_eq!(names, ["Editor", "Viewer"]);
    }

    #[test]
    fn bundles_read_an_xml_info_plist() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("Calc.app/Contents");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(
            c.join("Info.plist"),
            "<plist><dict><key>CFBundleName</key><string>Calculator</string>\
             <key>CFBundleShortVersionString</key><string>10.16</string></dict></plist>",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("Bare.app")).unwrap();
        let mut got = bundles(d.path());
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got[0].name, "Bare");
        assert_eq!(
            (got[1].name.as_str(), got[1].version.as_str()),
            ("Calculator", "10.16")
        );
    }
}
