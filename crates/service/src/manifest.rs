//! What `service install` wrote, so that `service uninstall` removes exactly that.
//!
//! The manifest is JSON in the instance's state folder (`service-manifest.json`). Every path in
//! it is the path actually written (under the staging root, if any). Files are recorded with a
//! digest: a file a person has edited since (the default config, typically) is kept, and
//! uninstall says so. Folders are removed only if install created them and they are empty.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Failure, Scope, Target};
use majordomo_core::exit;

/// One file install wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: PathBuf,
    /// FNV-1a 64 of the content written.
    pub digest: String,
    /// Shared by several instances (the systemd template unit): removed with the last of them.
    #[serde(default)]
    pub shared: bool,
    /// Kept on uninstall when a person changed it since (the default config).
    #[serde(default)]
    pub user_editable: bool,
}

/// The record of one install.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub instance: String,
    pub scope: Scope,
    /// `systemd`, `launchd` or `scm`.
    pub manager: String,
    /// The service's name for its manager.
    pub service: String,
    /// Other names install registered (timer unit, scheduled task, launchd job).
    #[serde(default)]
    pub extra: Vec<String>,
    /// The backup trigger, described.
    #[serde(default)]
    pub trigger: Option<String>,
    pub installed_at: String,
    /// `--home DIR` of a portable instance's service.
    #[serde(default)]
    pub home: Option<PathBuf>,
    pub root: Option<PathBuf>,
    /// Folders install created, parents first.
    pub dirs: Vec<PathBuf>,
    pub files: Vec<FileEntry>,
    /// Symbolic links install made (systemd `enable`).
    pub links: Vec<PathBuf>,
    /// Registry keys install created (Windows: the Event Log source).
    #[serde(default)]
    pub registry: Vec<String>,
}

/// FNV-1a 64: stable across builds, enough to notice an edited file.
pub fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Failure {
    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
        "; run with the rights to write there (root for --system), or use --user or --root DIR"
    } else {
        ""
    };
    Failure::new(
        exit::FAILURE,
        format!("cannot {what} {}: {e}{hint}", path.display()),
    )
}

impl Manifest {
    /// An empty manifest for `t`.
    pub fn new(t: &Target, manager: &str, service: String) -> Manifest {
        Manifest {
            version: 1,
            instance: t.instance.clone(),
            scope: t.scope,
            manager: manager.to_string(),
            service,
            extra: Vec::new(),
            trigger: None,
            installed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            home: t.home.clone(),
            root: t.root.clone(),
            dirs: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            registry: Vec::new(),
        }
    }

    /// Reads the manifest of `t`'s service.
    pub fn read(t: &Target) -> Result<Manifest, Failure> {
        let path = t.staged(&t.manifest_path());
        let text = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!(
                        "no service is installed for instance '{}' ({} scope): no manifest at {}; install one with `majordomo service install{}`",
                        t.instance,
                        t.scope.label(),
                        path.display(),
                        super::instance_flags(t)
                    ),
                ));
            }
            Err(e) => return Err(io_err("read the service manifest", &path, e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!(
                    "the service manifest {} is damaged ({e}); remove the service's files by hand and delete it",
                    path.display()
                ),
            )
        })
    }

    /// Creates `dir` and its missing parents, recording those it created.
    pub fn create_dir(&mut self, dir: &Path) -> Result<(), Failure> {
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.as_os_str().is_empty() || d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(&d).map_err(|e| io_err("create the folder", &d, e))?;
            self.dirs.push(d);
        }
        Ok(())
    }

    /// Writes `content` at `path` (atomically: temp file, then rename) and records it.
    pub fn write_file(
        &mut self,
        path: &Path,
        content: &str,
        shared: bool,
        user_editable: bool,
    ) -> Result<(), Failure> {
        if let Some(dir) = path.parent() {
            self.create_dir(dir)?;
        }
        write_atomic(path, content.as_bytes()).map_err(|e| io_err("write", path, e))?;
        self.files.push(FileEntry {
            path: path.to_path_buf(),
            digest: digest(content.as_bytes()),
            shared,
            user_editable,
        });
        Ok(())
    }

    /// Makes the symbolic link `link` → `target` (what `systemctl enable` does) and records it.
    #[cfg(unix)]
    pub fn link(&mut self, link: &Path, target: &Path) -> Result<(), Failure> {
        if let Some(dir) = link.parent() {
            self.create_dir(dir)?;
        }
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(target, link).map_err(|e| io_err("create the link", link, e))?;
        self.links.push(link.to_path_buf());
        Ok(())
    }

    /// systemd's `enable` links exist only on Unix.
    #[cfg(not(unix))]
    pub fn link(&mut self, link: &Path, _target: &Path) -> Result<(), Failure> {
        Err(Failure::new(
            exit::FAILURE,
            format!(
                "cannot create the link {}: symbolic links for systemd are made on Unix only",
                link.display()
            ),
        ))
    }

    /// Writes the manifest itself into the instance's state folder.
    pub fn save(&mut self, t: &Target) -> Result<(), Failure> {
        let path = t.staged(&t.manifest_path());
        if let Some(dir) = path.parent() {
            self.create_dir(dir)?;
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot encode the manifest: {e}")))?;
        write_atomic(&path, text.as_bytes()).map_err(|e| io_err("write", &path, e))
    }

    /// Removes what install wrote. `still_used(file)` says whether a shared file is still needed
    /// by another instance. Returns what was kept, and why.
    pub fn remove(&self, t: &Target, still_used: impl Fn(&Path) -> bool) -> Vec<String> {
        let mut kept = Vec::new();
        for l in &self.links {
            if let Err(e) = std::fs::remove_file(l)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                kept.push(format!("{} (cannot remove: {e})", l.display()));
            }
        }
        for f in &self.files {
            let current = match std::fs::read(&f.path) {
                Ok(b) => b,
                Err(_) => continue,
            };
            if f.user_editable && digest(&current) != f.digest {
                kept.push(format!("{} (changed since install)", f.path.display()));
                continue;
            }
            if f.shared && still_used(&f.path) {
                kept.push(format!("{} (used by other instances)", f.path.display()));
                continue;
            }
            if let Err(e) = std::fs::remove_file(&f.path) {
                kept.push(format!("{} (cannot remove: {e})", f.path.display()));
            }
        }
        let _ = std::fs::remove_file(t.staged(&t.manifest_path()));
        for d in self.dirs.iter().rev() {
            // Only empty folders go: whatever the daemon wrote since stays.
            let _ = std::fs::remove_dir(d);
        }
        // In a staging root, folders another instance's install created go with the last file.
        if let Some(root) = &t.root {
            let written = self.files.iter().map(|f| &f.path).chain(&self.links);
            for p in written.chain(std::iter::once(&t.staged(&t.manifest_path()))) {
                let mut dir = p.parent();
                while let Some(d) = dir {
                    if !d.starts_with(root)
                        || d == root.as_path()
                        || (d.exists() && std::fs::remove_dir(d).is_err())
                    {
                        break;
                    }
                    dir = d.parent();
                }
            }
        }
        let state = t.staged(&t.layout.state_dir);
        if state.exists() && self.dirs.contains(&state) {
            kept.push(format!("{} (holds data the daemon wrote)", state.display()));
        }
        kept
    }
}

/// Writes through a temporary file in the same folder, then renames over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable() {
        assert_eq!(digest(b""), "cbf29ce484222325");
        assert_eq!(digest(b"a"), "af63dc4c8601ec8c");
        assert_ne!(digest(b"ab"), digest(b"ba"));
    }
}
