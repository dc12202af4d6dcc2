//! `[[pipeline]]` and `[[uploader]]`: the config sections of the drop-folder pipeline, and their
//! semantic checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use majordomo_core::{Dur, Problem, Secret, Size};

/// The pipeline subsystem's config: the `[[pipeline]]` and `[[uploader]]` arrays of tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineSection {
    /// `[[pipeline]]`, in file order.
    pub pipeline: Vec<PipelineConfig>,
    /// `[[uploader]]`, in file order.
    pub uploader: Vec<UploaderConfig>,
}

/// `[[pipeline]]`: one drop folder (or several) whose files are converted, queued and uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Unique name (a-z, 0-9, '_', '-'); names the work folder and appears in events.
    pub name: String,
    /// Folders to take files from (absolute paths); created at start if missing.
    pub watch: Vec<PathBuf>,
    /// Also take files from sub-folders of the watch folders (dot-folders are skipped).
    pub recursive: bool,
    /// File-name patterns to take (`*`, `?`, `[abc]`); other files are left alone.
    pub patterns: Vec<String>,
    /// `"passthrough"` (upload the file as it is) or `{ command = "...", args = ["{input}", "{output}"], timeout = "5m" }`.
    pub converter: Converter,
    /// Conversions running at once.
    pub concurrency: usize,
    /// A file must keep its size, mtime and file id this long before it is taken.
    pub settle: Dur,
    /// What happens to the input once its converted item is safely queued: `delete`, `move` (into done_dir), `archive` (into done_dir/YYYY-MM-DD) or `keep` (stays in the work folder as `.kept`).
    pub post_action: PostAction,
    /// Where `move` and `archive` put inputs.
    pub done_dir: Option<PathBuf>,
    /// Where inputs whose conversion failed go, each with a `.reason` file (default: work_dir/error).
    pub error_dir: Option<PathBuf>,
    /// Where items the server refused for good go, each with a `.reason` file (default: work_dir/dead).
    pub dead_dir: Option<PathBuf>,
    /// The pipeline's work folder, where the queue lives; must be on the same file system as the watch folders (default: STATE_DIR/pipeline/NAME).
    pub work_dir: Option<PathBuf>,
    /// The `[[uploader]]` (by name) that sends the items.
    pub upload: String,
    /// Poll the folders instead of watching them (network shares).
    pub poll: bool,
    /// How often to look when polling.
    pub poll_interval: Dur,
    /// Full rescan of the watch folders this often even when watching (watch events are hints).
    pub rescan: Dur,
    /// Stop taking new files while this many items are in the work folder (the drop folder buffers).
    pub high_water: usize,
    /// Stop taking new files while the work folder's file system has less free space than this.
    pub min_free: Size,
    /// First retry delay; doubles per attempt, with full jitter.
    pub retry_base: Dur,
    /// Longest retry delay.
    pub retry_max: Dur,
    /// Upload attempts before an item is dead-lettered; 0 retries transient failures forever.
    pub max_attempts: u32,
    /// Uploaded items kept in the work folder as `.done` for inspection (the newest ones); older ones are removed.
    pub keep_done: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            watch: Vec::new(),
            recursive: false,
            patterns: vec!["*".into()],
            converter: Converter::default(),
            concurrency: 10,
            settle: Dur::secs(1),
            post_action: PostAction::Delete,
            done_dir: None,
            error_dir: None,
            dead_dir: None,
            work_dir: None,
            upload: String::new(),
            poll: false,
            poll_interval: Dur::secs(2),
            rescan: Dur::secs(60),
            high_water: 10_000,
            min_free: Size::mb(100),
            retry_base: Dur::secs(1),
            retry_max: Dur::secs(30 * 60),
            max_attempts: 0,
            keep_done: 1000,
        }
    }
}

/// How an input becomes the item that is uploaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Converter {
    /// `"passthrough"`: the file itself.
    Named(String),
    /// A program run per file.
    Command(CommandConverter),
}

impl Default for Converter {
    fn default() -> Self {
        Converter::Named("passthrough".into())
    }
}

impl Converter {
    pub fn is_passthrough(&self) -> bool {
        matches!(self, Converter::Named(n) if n == "passthrough")
    }
}

/// A converter program: `{input}` and `{output}` in its arguments are replaced by the paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConverter {
    /// The program (absolute path or looked up in PATH).
    pub command: String,
    /// Its arguments; `{input}` and `{output}` are replaced.
    #[serde(default)]
    pub args: Vec<String>,
    /// Longest a conversion may take; then the program and everything it started are killed.
    #[serde(default = "default_convert_timeout")]
    pub timeout: Dur,
}

fn default_convert_timeout() -> Dur {
    Dur::secs(300)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostAction {
    Delete,
    Move,
    Archive,
    Keep,
}

/// `[[uploader]]`: an HTTP endpoint that items are sent to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploaderConfig {
    /// Unique name, referenced by a pipeline's `upload`.
    pub name: String,
    /// `http://` or `https://` URL each item is sent to, as the request body (its userinfo and query values are never printed).
    #[serde(serialize_with = "majordomo_core::units::serialize_url")]
    pub url: String,
    /// `POST`, `PUT` or `PATCH`.
    pub method: String,
    /// Extra request headers; `${VAR}` is replaced by the environment variable VAR (values are secrets: never printed).
    pub headers: BTreeMap<String, Secret>,
    /// Requests in flight at once, over all pipelines using this uploader.
    pub concurrency: usize,
    /// Longest one request may take (connect, send, answer).
    pub timeout: Dur,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            method: "POST".into(),
            headers: BTreeMap::new(),
            concurrency: 5,
            timeout: Dur::secs(30),
        }
    }
}

pub use majordomo_core::units::expand_env;

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn inside(child: &Path, parent: &Path) -> bool {
    child.starts_with(parent)
}

/// Semantic checks of `[[pipeline]]` and `[[uploader]]`, pushed as located problems.
pub fn validate(pipes: &[PipelineConfig], ups: &[UploaderConfig], problems: &mut Vec<Problem>) {
    let mut up_names = Vec::new();
    for (i, u) in ups.iter().enumerate() {
        let at = |f: &str| format!("uploader[{i}].{f}");
        if !valid_name(&u.name) {
            problems.push(Problem::at(
                at("name"),
                format!("{:?} is not a valid uploader name", u.name),
                "use 1-64 of a-z, 0-9, '_', '-'",
            ));
        } else if up_names.contains(&u.name.as_str()) {
            problems.push(Problem::at(
                at("name"),
                format!("a second uploader named {:?}", u.name),
                "give each [[uploader]] its own name",
            ));
        }
        up_names.push(u.name.as_str());
        match reqwest::Url::parse(&u.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => problems.push(Problem::at(
                at("url"),
                format!(
                    "{:?} is not an http(s) URL",
                    majordomo_core::units::redact_url(&u.url)
                ),
                "write it like \"https://server.example/api/reports\"",
            )),
            Err(e) => problems.push(Problem::at(
                at("url"),
                format!(
                    "{:?} is not a URL: {e}",
                    majordomo_core::units::redact_url(&u.url)
                ),
                "write it like \"https://server.example/api/reports\"",
            )),
        }
        if !matches!(u.method.as_str(), "POST" | "PUT" | "PATCH") {
            problems.push(Problem::at(
                at("method"),
                format!("{:?} is not a method that carries a body", u.method),
                "use \"POST\", \"PUT\" or \"PATCH\"",
            ));
        }
        for (k, v) in &u.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                problems.push(Problem::at(
                    at(&format!("headers.{k}")),
                    format!("{k:?} is not a valid header name"),
                    "use letters, digits and '-'",
                ));
            }
            match expand_env(v.expose(), |k| std::env::var(k).ok()) {
                Ok(value) => {
                    if reqwest::header::HeaderValue::from_str(&value).is_err() {
                        problems.push(Problem::at(
                            at(&format!("headers.{k}")),
                            "the value is not a valid header value (control characters?)",
                            "use printable ASCII",
                        ));
                    }
                }
                Err(e) => problems.push(Problem::at(
                    at(&format!("headers.{k}")),
                    e,
                    "set the variable in the daemon's environment, or write `${NAME}` with a valid NAME",
                )),
            }
        }
        if u.concurrency == 0 {
            problems.push(Problem::at(
                at("concurrency"),
                "0 would never upload anything",
                "use a positive number; the default is 5",
            ));
        }
        if u.timeout.get().is_zero() {
            problems.push(Problem::at(
                at("timeout"),
                "a timeout of 0 fails every request",
                "use e.g. \"30s\"",
            ));
        }
    }
    let mut names = Vec::new();
    // (pipeline index, folder, recursive) of every watch folder, to find overlaps.
    let mut watched: Vec<(usize, &Path, bool)> = Vec::new();
    for (i, p) in pipes.iter().enumerate() {
        let at = |f: &str| format!("pipeline[{i}].{f}");
        if !valid_name(&p.name) {
            problems.push(Problem::at(
                at("name"),
                format!("{:?} is not a valid pipeline name", p.name),
                "use 1-64 of a-z, 0-9, '_', '-'",
            ));
        } else if names.contains(&p.name.as_str()) {
            problems.push(Problem::at(
                at("name"),
                format!("a second pipeline named {:?}", p.name),
                "give each [[pipeline]] its own name",
            ));
        }
        names.push(p.name.as_str());
        if p.watch.is_empty() {
            problems.push(Problem::at(
                at("watch"),
                "no folder to watch",
                "write watch = [\"/data/in\"]",
            ));
        }
        for w in &p.watch {
            if !w.is_absolute() {
                problems.push(Problem::at(
                    at("watch"),
                    format!("{} is not an absolute path", w.display()),
                    "write the full path; a service's working folder is not yours",
                ));
            }
            for (j, other, rec) in &watched {
                let overlap =
                    w == other || (*rec && inside(w, other)) || (p.recursive && inside(other, w));
                if overlap {
                    problems.push(Problem::at(
                        at("watch"),
                        format!(
                            "{} overlaps a folder watched by pipeline[{j}] ({})",
                            w.display(),
                            other.display()
                        ),
                        "each file must belong to one pipeline: use separate folders",
                    ));
                }
            }
            watched.push((i, w, p.recursive));
        }
        let own: Vec<(&str, &PathBuf)> = [
            ("work_dir", &p.work_dir),
            ("done_dir", &p.done_dir),
            ("error_dir", &p.error_dir),
            ("dead_dir", &p.dead_dir),
        ]
        .into_iter()
        .filter_map(|(n, d)| d.as_ref().map(|d| (n, d)))
        .collect();
        for (field, dir) in &own {
            if !dir.is_absolute() {
                problems.push(Problem::at(
                    at(field),
                    format!("{} is not an absolute path", dir.display()),
                    "write the full path",
                ));
            }
            for w in &p.watch {
                if *field == "work_dir" && inside(w, dir) {
                    problems.push(Problem::at(
                        at("watch"),
                        format!(
                            "watch folder {} is inside the work folder {}",
                            w.display(),
                            dir.display()
                        ),
                        "keep the drop folder outside the work folder",
                    ));
                }
                if dir.as_path() == w.as_path() || (p.recursive && inside(dir, w)) {
                    problems.push(Problem::at(
                        at(field),
                        format!(
                            "{} is (inside) the watch folder {}: its files would be taken again",
                            dir.display(),
                            w.display()
                        ),
                        "put it outside the watch folders",
                    ));
                }
            }
        }
        if p.patterns.is_empty() {
            problems.push(Problem::at(
                at("patterns"),
                "no pattern: no file would ever be taken",
                "use [\"*\"] for every file",
            ));
        }
        for pat in &p.patterns {
            if let Err(e) = glob::Pattern::new(pat) {
                problems.push(Problem::at(
                    at("patterns"),
                    format!("bad pattern {pat:?}: {e}"),
                    "use *, ? and [abc], like \"*.csv\"",
                ));
            }
        }
        match &p.converter {
            Converter::Named(n) if n != "passthrough" => problems.push(Problem::at(
                at("converter"),
                format!("unknown converter {n:?}"),
                "use \"passthrough\" or { command = \"/usr/bin/conv\", args = [\"{input}\", \"{output}\"] }",
            )),
            Converter::Command(c) => {
                if c.command.is_empty() {
                    problems.push(Problem::at(at("converter"), "an empty command", "name the program"));
                }
                if !c.args.iter().any(|a| a.contains("{output}")) {
                    problems.push(Problem::at(
                        at("converter"),
                        "the arguments never mention {output}: the program cannot know where to write",
                        "add \"{output}\" to args",
                    ));
                }
                if c.timeout.get().is_zero() {
                    problems.push(Problem::at(at("converter"), "a timeout of 0", "use e.g. \"5m\""));
                }
            }
            _ => {}
        }
        if p.concurrency == 0 {
            problems.push(Problem::at(
                at("concurrency"),
                "0 would never convert anything",
                "use a positive number; the default is 10",
            ));
        }
        if matches!(p.post_action, PostAction::Move | PostAction::Archive) && p.done_dir.is_none() {
            problems.push(Problem::at(
                at("post_action"),
                "move and archive need done_dir",
                "set done_dir = \"/data/done\", or use post_action = \"delete\"",
            ));
        }
        if p.upload.is_empty() {
            problems.push(Problem::at(
                at("upload"),
                "no uploader named",
                "set upload to the name of an [[uploader]]",
            ));
        } else if !ups.iter().any(|u| u.name == p.upload) {
            problems.push(Problem::at(
                at("upload"),
                format!("no [[uploader]] named {:?}", p.upload),
                format!(
                    "known uploaders: {}",
                    if up_names.is_empty() {
                        "none".to_string()
                    } else {
                        up_names.join(", ")
                    }
                ),
            ));
        }
        for (field, d) in [
            ("poll_interval", p.poll_interval),
            ("rescan", p.rescan),
            ("retry_base", p.retry_base),
            ("retry_max", p.retry_max),
        ] {
            if d.get().is_zero() {
                problems.push(Problem::at(
                    at(field),
                    "a duration of 0",
                    "use a positive duration",
                ));
            }
        }
        if p.high_water == 0 {
            problems.push(Problem::at(
                at("high_water"),
                "0 would never take a file",
                "use a positive number; the default is 10000",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_expand() {
        let env = |k: &str| (k == "TOKEN").then(|| "abc".to_string());
        assert_eq!(expand_env("Bearer ${TOKEN}", env).unwrap(), "Bearer abc");
        assert_eq!(expand_env("plain", env).unwrap(), "plain");
        assert!(expand_env("${NOPE}", env).unwrap_err().contains("NOPE"));
        assert!(expand_env("${TOKEN", env).is_err());
        assert!(expand_env("${}", env).is_err());
    }

    proptest::proptest! {
        #[test]
        fn expand_env_never_panics(s in ".*") {
            let _ = expand_env(&s, |_| Some("x".into()));
        }
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;
    #[cfg(unix)]
    use majordomo_core::load::{Root, Section, check_text};

    /// The application's commented default config (owned by the binary crate).
    const DEFAULT_TOML: &str = include_str!("../../majordomo/src/default.toml");

    /// Every field of `[[pipeline]]` and `[[uploader]]` appears in the commented example of
    /// `default.toml`, under its section.
    #[test]
    fn default_toml_documents_every_field() {
        let documented = |section: &str, field: &str| {
            let mut cur = String::new();
            DEFAULT_TOML.lines().any(|line| {
                let l = line.trim_start_matches('#').trim();
                if l.starts_with("[[") {
                    cur = l.trim_matches(|c| c == '[' || c == ']').to_string();
                }
                cur == section && l.starts_with(&format!("{field} = "))
            })
        };
        let p = serde_json::to_value(PipelineConfig::default()).unwrap();
        for k in p.as_object().unwrap().keys() {
            assert!(
                documented("pipeline", k),
                "pipeline.{k} is missing from default.toml"
            );
        }
        let u = serde_json::to_value(UploaderConfig::default()).unwrap();
        for k in u.as_object().unwrap().keys() {
            assert!(
                documented("uploader", k),
                "uploader.{k} is missing from default.toml"
            );
        }
    }

    /// A config of just this subsystem's two sections, to run the real loader on them.
    #[cfg(unix)]
    #[derive(Debug, Default)]
    struct Only(PipelineSection);

    #[cfg(unix)]
    impl Root for Only {
        const DEFAULT_TOML: &'static str = "";
        const SECTIONS: &'static [&'static str] = &["pipeline", "uploader"];
        fn section(&mut self, name: &str, value: Section<'_>, problems: &mut Vec<Problem>) -> bool {
            match name {
                "pipeline" => value.many(&mut self.0.pipeline, problems),
                "uploader" => value.many(&mut self.0.uploader, problems),
                _ => return false,
            }
            true
        }
        fn validate(&self, problems: &mut Vec<Problem>) {
            validate(&self.0.pipeline, &self.0.uploader, problems);
        }
    }

    // The issue's example uses Unix paths, which are not absolute on Windows.
    #[cfg(unix)]
    #[test]
    fn the_issue_example_is_valid_and_bad_ones_are_located() {
        let text = r#"
[[pipeline]]
name = "reports"
watch = ["/data/in"]
patterns = ["*.csv"]
converter = { command = "/usr/bin/conv", args = ["{input}", "{output}"], timeout = "5m" }
concurrency = 10
settle = "1s"
post_action = "move"
done_dir = "/data/done"
error_dir = "/data/error"
upload = "wats"

[[uploader]]
name = "wats"
url = "https://server.example/api/reports"
method = "POST"
headers = { Authorization = "Bearer ${PATH}" }
concurrency = 5
timeout = "30s"
"#;
        let cfg = check_text::<Only>(text, "p.toml", &[]).unwrap().0;
        assert_eq!(cfg.pipeline.len(), 1);
        assert!(!format!("{cfg:?}").contains(&std::env::var("PATH").unwrap_or_default()));
        let bad = r#"
[[pipeline]]
name = "a"
watch = ["/data/in"]
upload = "nope"
patterns = ["[z-"]

[[pipeline]]
name = "b"
watch = ["/data/in"]
work_dir = "/data"
upload = "up"

[[uploader]]
name = "up"
url = "ftp://x"
headers = { X = "${MAJORDOMO_TEST_SURELY_UNSET_VAR}" }
"#;
        let err = check_text::<Only>(bad, "b.toml", &[]).unwrap_err();
        let lines = err.lines().join("\n");
        for want in [
            "b.toml:5:1: pipeline[0].upload: no [[uploader]] named \"nope\"",
            "pipeline[0].patterns: bad pattern",
            "pipeline[1].watch: /data/in overlaps",
            "inside the work folder",
            "uploader[0].url:",
            "MAJORDOMO_TEST_SURELY_UNSET_VAR is not set",
        ] {
            assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
        }
    }
}
