//! The shared state store (seed 002's state file): small JSON values by key in
//! `<state>/state.json`, every change made under the `state` named lock and written by atomic
//! replace with fsync (file and folder) before it is acknowledged, so it survives kill -9 and
//! power loss, and the CLI can use it directly while the daemon is down.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use majordomo_proto::scheduler::StateValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::locks;

/// The lock every change of the store takes.
pub const LOCK: &str = "state";
/// Largest value accepted, serialized.
pub const MAX_VALUE: usize = 64 * 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    value: Value,
    version: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    keys: BTreeMap<String, Entry>,
}

/// The store of one instance.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

pub fn check_key(key: &str) -> io::Result<()> {
    if key.is_empty() || key.len() > 200 || key.chars().any(char::is_control) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{key:?} is not a valid key; use 1-200 printable characters"),
        ));
    }
    Ok(())
}

fn check_value(v: &Value) -> io::Result<()> {
    let n = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if n > MAX_VALUE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the value is {n} bytes; the state store takes values up to {MAX_VALUE} bytes"),
        ));
    }
    Ok(())
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn read(&self) -> io::Result<File> {
        match std::fs::read(self.path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a state file ({e}); move it aside to start empty",
                        self.path().display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(e),
        }
    }

    fn write(&self, f: &File) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(f).map_err(io::Error::other)?;
        write_atomic(&self.path(), &text, true)
    }

    fn value(f: &File, key: &str) -> StateValue {
        let e = f.keys.get(key);
        StateValue {
            key: key.to_string(),
            value: e.map(|e| e.value.clone()),
            version: e.map(|e| e.version).unwrap_or(0),
        }
    }

    /// Runs `change` under the store's lock, writing the file when it returns `true`.
    fn locked<T>(&self, change: impl FnOnce(&mut File) -> io::Result<(bool, T)>) -> io::Result<T> {
        std::fs::create_dir_all(&self.dir)?;
        let _lock = locks::acquire(&self.dir, LOCK, None)?;
        let mut f = self.read()?;
        let (dirty, out) = change(&mut f)?;
        if dirty {
            self.write(&f)?;
        }
        Ok(out)
    }

    pub fn get(&self, key: &str) -> io::Result<StateValue> {
        check_key(key)?;
        // A reader never sees half a file (atomic replace): no lock needed.
        Ok(Self::value(&self.read()?, key))
    }

    pub fn keys(&self) -> io::Result<Vec<StateValue>> {
        let f = self.read()?;
        Ok(f.keys.keys().map(|k| Self::value(&f, k)).collect())
    }

    pub fn set(&self, key: &str, value: Value) -> io::Result<StateValue> {
        check_key(key)?;
        check_value(&value)?;
        self.locked(|f| {
            let e = f.keys.entry(key.to_string()).or_default();
            e.value = value;
            e.version += 1;
            Ok((true, Self::value(f, key)))
        })
    }

    pub fn del(&self, key: &str) -> io::Result<StateValue> {
        check_key(key)?;
        self.locked(|f| {
            let dirty = f.keys.remove(key).is_some();
            Ok((dirty, Self::value(f, key)))
        })
    }

    /// Replaces the value only if it is `expected` (`None` = absent); `value` `None` deletes.
    /// Returns whether it swapped and the value in force afterwards.
    pub fn cas(
        &self,
        key: &str,
        expected: Option<&Value>,
        value: Option<Value>,
    ) -> io::Result<(bool, StateValue)> {
        check_key(key)?;
        if let Some(v) = &value {
            check_value(v)?;
        }
        self.locked(|f| {
            let current = f.keys.get(key).map(|e| &e.value);
            // `null` expected means absent, as on the wire.
            let expected = expected.filter(|v| !v.is_null());
            if current != expected {
                return Ok((false, (false, Self::value(f, key))));
            }
            match value.filter(|v| !v.is_null()) {
                Some(v) => {
                    let e = f.keys.entry(key.to_string()).or_default();
                    e.value = v;
                    e.version += 1;
                }
                None => {
                    f.keys.remove(key);
                }
            }
            Ok((true, (true, Self::value(f, key))))
        })
    }
}

/// Writes `bytes` to `path` by atomic replace: a temporary file beside it, fsync'd when
/// `durable`, renamed over, and the folder fsync'd.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        majordomo_platform::fsops::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_get_del_cas() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::new(dir.path());
        assert_eq!(s.get("a").expect("get").value, None);
        assert_eq!(s.set("a", json!({"n": 1})).expect("set").version, 1);
        let (ok, v) = s
            .cas("a", Some(&json!({"n": 2})), Some(json!(3)))
            .expect("cas");
        assert!(!ok);
        assert_eq!(v.value, Some(json!({"n": 1})));
        let (ok, v) = s
            .cas("a", Some(&json!({"n": 1})), Some(json!(3)))
            .expect("cas");
        assert!(ok);
        assert_eq!((v.value, v.version), (Some(json!(3)), 2));
        let (ok, _) = s.cas("b", None, Some(json!("x"))).expect("cas");
        assert!(ok, "absent expected, absent found");
        let (ok, _) = s.cas("b", None, Some(json!("y"))).expect("cas");
        assert!(!ok);
        assert_eq!(s.del("a").expect("del").value, None);
        assert_eq!(
            Store::new(dir.path()).get("b").expect("get").value,
            Some(json!("x"))
        );
        assert!(s.set("", json!(1)).is_err());
    }
}
