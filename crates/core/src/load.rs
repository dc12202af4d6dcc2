//! Reading, layering and validating a config, collecting every problem at once.
//!
//! The file is parsed into a spanned TOML tree; environment and flag overrides are grafted onto
//! it with a span past the end of the file that identifies them. Each top-level section (and each
//! element of an array section) is then deserialized on its own, so one bad section does not hide
//! the errors of another, and every error keeps a byte span that maps back to file:line:col or to
//! the variable or flag that set it.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// The top-level config of an application: its section table, the embedded default and the
/// checks across sections. The loader is generic over it, so the core names no subsystem.
pub trait Root: Default + Sized {
    /// The commented default configuration, used when the instance has no config file.
    const DEFAULT_TOML: &'static str;
    /// Every top-level section name, for "unknown section" hints.
    const SECTIONS: &'static [&'static str];
    /// Deserializes the section `name` into `self` (with [`Section::one`] or [`Section::many`]).
    /// Returns `false` when there is no such section.
    fn section(&mut self, name: &str, value: Section<'_>, problems: &mut Vec<Problem>) -> bool;
    /// Checks what serde cannot: values that parse but make no sense, and references across
    /// sections. Adds to `problems`, each with its field path.
    fn validate(&self, problems: &mut Vec<Problem>);
}

/// One top-level section's value, still carrying the spans of what the user wrote.
pub struct Section<'i>(Value<'i>);

impl Section<'_> {
    /// A `[table]` section, into `slot`.
    pub fn one<T: DeserializeOwned>(self, slot: &mut T, problems: &mut Vec<Problem>) {
        one(slot, self.0, problems)
    }

    /// An array-of-tables section (`[[program]]`), each element on its own, appended to `slot`.
    pub fn many<T: DeserializeOwned>(self, slot: &mut Vec<T>, problems: &mut Vec<Problem>) {
        many(slot, self.0, problems)
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The instance's config file.
    File,
    /// No file existed: the embedded default.
    Embedded,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Embedded => "embedded-default",
        }
    }
}

/// A validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<R> {
    pub config: R,
    pub path: PathBuf,
    pub source: Source,
    /// Hash of the text and overrides, to skip reloads that change nothing.
    pub digest: u64,
}

/// What set an override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One value set outside the file: `path` is `["log", "level"]` for `MAJORDOMO_LOG__LEVEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub path: Vec<String>,
    /// The value as written; parsed as a TOML value when it is one (`true`, `5`, `["a"]`),
    /// taken as a string otherwise (`debug`, `10s`).
    pub raw: String,
    pub origin: Origin,
}

impl Override {
    /// Every `MAJORDOMO_<SECTION>__<FIELD>[__<FIELD>...]` variable. Variables without `__`
    /// (`MAJORDOMO_HOME`, `MAJORDOMO_INSTANCE`, ...) are not config fields and are skipped.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut out: Vec<Override> = vars
            .into_iter()
            .filter_map(|(key, raw)| {
                let rest = key.strip_prefix("MAJORDOMO_")?;
                if !rest.contains("__") {
                    return None;
                }
                let path = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                Some(Override {
                    path,
                    raw,
                    origin: Origin::Env(key),
                })
            })
            .collect();
        // Deterministic order, whatever the environment's.
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    pub fn flag(flag: &str, path: &[&str], raw: impl Into<String>) -> Override {
        Override {
            path: path.iter().map(|s| s.to_string()).collect(),
            raw: raw.into(),
            origin: Origin::Flag(flag.to_string()),
        }
    }
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File { line: usize, col: usize },
    Override(Origin),
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, like `log.level` or `program[2].depends_on`; empty for the document itself.
    pub path: String,
    pub message: String,
    pub hint: String,
    pub location: Option<Location>,
    span: Option<Range<usize>>,
}

impl Problem {
    /// A problem found by validation, at a field path; located later.
    pub fn at(
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
            location: None,
            span: None,
        }
    }

    fn spanned(
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            path: String::new(),
            message: message.into(),
            hint: hint.into(),
            location: None,
            span,
        }
    }
}

/// Every problem of a config, with the file name to print them against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub file: String,
    pub list: Vec<Problem>,
}

impl Problems {
    /// One line per problem: `file:line:col: path: message (hint: ...)`.
    pub fn lines(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|p| {
                let at = match &p.location {
                    Some(Location::File { line, col }) => format!("{}:{line}:{col}", self.file),
                    Some(Location::Override(origin)) => origin.to_string(),
                    None => self.file.clone(),
                };
                let path = if p.path.is_empty() {
                    String::new()
                } else {
                    format!(" {}:", p.path)
                };
                format!("{at}:{path} {} (hint: {})", p.message, p.hint)
            })
            .collect()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for line in self.lines() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Loads the config at `path` (or the embedded default when there is no such file), with overrides.
pub fn load<R: Root>(path: &Path, overrides: &[Override]) -> Result<Loaded<R>, Problems> {
    let (text, source) = match std::fs::read_to_string(path) {
        Ok(text) => (text, Source::File),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (R::DEFAULT_TOML.to_string(), Source::Embedded)
        }
        Err(e) => {
            return Err(Problems {
                file: path.display().to_string(),
                list: vec![Problem::spanned(
                    None,
                    format!("cannot read the config file: {e}"),
                    "check that the file is readable by the daemon's user",
                )],
            });
        }
    };
    let label = match source {
        Source::File => path.display().to_string(),
        Source::Embedded => "<embedded default>".to_string(),
    };
    let config = check_text::<R>(&text, &label, overrides)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    for o in overrides {
        o.path.hash(&mut h);
        o.raw.hash(&mut h);
    }
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        source,
        digest: h.finish(),
    })
}

/// Parses and validates config text; `label` names it in problems.
pub fn check_text<R: Root>(text: &str, label: &str, overrides: &[Override]) -> Result<R, Problems> {
    let problems = |list| Problems {
        file: label.to_string(),
        list,
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut list: Vec<Problem> = syntax
            .iter()
            .map(|e| {
                Problem::spanned(
                    e.span(),
                    e.message().trim().to_string(),
                    "fix the TOML syntax; see `majordomo config default` for a valid file",
                )
            })
            .collect();
        locate(&mut list, text, &DeTable::new(), overrides);
        return Err(problems(list));
    }
    let mut root = root.into_inner();
    let mut list = Vec::new();
    for (i, ov) in overrides.iter().enumerate() {
        let span = override_span(text, i);
        if let Err(p) = graft(&mut root, ov, span) {
            list.push(p);
        }
    }
    let snapshot = root.clone();
    let config = build::<R>(root, &mut list);
    locate(&mut list, text, &snapshot, overrides);
    // Semantic checks run even when some section failed to deserialize, so that every problem
    // is reported at once; only those about a section that already failed are dropped (its
    // values are defaults, not what the user wrote).
    let failed: Vec<String> = list
        .iter()
        .map(|p| section_of(&p.path).to_string())
        .collect();
    let mut semantic = Vec::new();
    config.validate(&mut semantic);
    semantic.retain(|p| !failed.iter().any(|f| f == section_of(&p.path)));
    locate(&mut semantic, text, &snapshot, overrides);
    list.extend(semantic);
    if list.is_empty() {
        return Ok(config);
    }
    // In reading order: the file top to bottom, then overrides.
    list.sort_by_key(|p| match &p.location {
        Some(Location::File { line, col }) => (0, *line, *col),
        Some(Location::Override(_)) => (1, 0, 0),
        None => (2, 0, 0),
    });
    Err(problems(list))
}

/// `log` for `log.level`; for arrays of tables the element: `program[2]` for `program[2].args`.
fn section_of(path: &str) -> &str {
    let head = path.split('.').next().unwrap_or(path);
    match head.find(']') {
        Some(end) => &head[..=end],
        None => head.split('[').next().unwrap_or(head),
    }
}

/// The sentinel span of the `i`th override: one byte past the end of the file, per override.
fn override_span(text: &str, i: usize) -> Range<usize> {
    let start = text.len() + 1 + i;
    start..start + 1
}

type Value<'i> = Spanned<DeValue<'i>>;

fn graft<'i>(root: &mut DeTable<'i>, ov: &'i Override, span: Range<usize>) -> Result<(), Problem> {
    let value = match DeValue::parse(&ov.raw) {
        Ok(v) => respan(v.into_inner(), &span),
        Err(_) => Spanned::new(
            span.clone(),
            DeValue::String(Cow::Borrowed(ov.raw.as_str())),
        ),
    };
    let Some((last, parents)) = ov.path.split_last() else {
        return Err(Problem::spanned(
            Some(span),
            "empty field path",
            "name a section and a field",
        ));
    };
    let mut table = root;
    for seg in parents {
        if table.get(seg.as_str()).is_none() {
            table.insert(
                Spanned::new(span.clone(), Cow::Borrowed(seg.as_str())),
                Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
            );
        }
        table = match table.get_mut(seg.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(t)) => t,
            _ => {
                return Err(Problem::spanned(
                    Some(span),
                    format!("`{seg}` is not a table that a single value can be set in"),
                    "array sections like [[program]] can only be set in the file",
                ));
            }
        };
    }
    table.insert(
        Spanned::new(span.clone(), Cow::Borrowed(last.as_str())),
        value,
    );
    Ok(())
}

/// Gives a value parsed from an override, and everything inside it, the override's span.
fn respan<'i>(value: DeValue<'i>, span: &Range<usize>) -> Value<'i> {
    let value = match value {
        DeValue::Array(mut a) => {
            for item in a.iter_mut() {
                let inner = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = respan(inner.into_inner(), span);
            }
            DeValue::Array(a)
        }
        DeValue::Table(t) => {
            let mut out = DeTable::new();
            for (k, v) in t {
                out.insert(
                    Spanned::new(span.clone(), k.into_inner()),
                    respan(v.into_inner(), span),
                );
            }
            DeValue::Table(out)
        }
        other => other,
    };
    Spanned::new(span.clone(), value)
}

/// Deserializes each section on its own, collecting every error.
fn build<R: Root>(root: DeTable<'_>, problems: &mut Vec<Problem>) -> R {
    let mut cfg = R::default();
    for (k, v) in root {
        let k_span = k.span();
        let name = k.as_ref().as_ref();
        if !cfg.section(name, Section(v), problems) {
            problems.push(Problem::spanned(
                Some(k_span),
                format!("unknown section `{name}`"),
                format!("known sections: {}", R::SECTIONS.join(", ")),
            ));
        }
    }
    cfg
}

/// Deserializes one section. serde stops at the first error, so after each error the offending
/// entry is removed and the section tried again: every error in the section is reported.
fn one<T: DeserializeOwned>(slot: &mut T, value: Value<'_>, problems: &mut Vec<Problem>) {
    let mut value = value;
    for _ in 0..64 {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => {
                *slot = v;
                return;
            }
            Err(e) => {
                let removed = e.span().is_some_and(|span| remove_at(&mut value, &span));
                problems.push(from_toml(&e));
                if !removed {
                    return;
                }
            }
        }
    }
}

/// Removes the deepest table entry whose key or value contains `span`.
fn remove_at(value: &mut Value<'_>, span: &Range<usize>) -> bool {
    match value.get_mut() {
        DeValue::Table(t) => {
            let mut hit = None;
            for (k, v) in t.iter_mut() {
                if remove_at(v, span) {
                    return true;
                }
                if hit.is_none() && (contains(&k.span(), span) || contains(&v.span(), span)) {
                    hit = Some(k.as_ref().to_string());
                }
            }
            match hit {
                Some(k) => t.remove(k.as_str()).is_some(),
                None => false,
            }
        }
        DeValue::Array(a) => a.iter_mut().any(|item| remove_at(item, span)),
        _ => false,
    }
}

/// For array sections (`[[program]]`): each element on its own.
fn many<T: DeserializeOwned>(slot: &mut Vec<T>, value: Value<'_>, problems: &mut Vec<Problem>) {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => {
            for item in items.iter().cloned() {
                let mut parsed = None;
                one(&mut parsed, item, problems);
                slot.extend(parsed);
            }
        }
        _ => problems.push(Problem::spanned(
            Some(span),
            "expected an array of tables",
            "write each entry as its own [[section]] table",
        )),
    }
}

fn from_toml(e: &toml::de::Error) -> Problem {
    Problem::spanned(
        e.span(),
        e.message().trim().to_string(),
        "see `majordomo config default` for every field, its type and its documentation",
    )
}

/// Fills in `path` (from the span) or the span (from `path`), then the location.
fn locate(list: &mut [Problem], text: &str, root: &DeTable<'_>, overrides: &[Override]) {
    for p in list.iter_mut() {
        match (&p.span, p.path.is_empty()) {
            (Some(span), true) => {
                let mut segs = Vec::new();
                path_at(root, span, &mut segs);
                p.path = segs.join("").trim_start_matches('.').to_string();
            }
            (None, false) => p.span = span_of(root, &p.path),
            _ => {}
        }
        p.location = p.span.as_ref().map(|span| {
            if span.start > text.len() {
                let i = span.start - text.len() - 1;
                match overrides.get(i) {
                    Some(o) => Location::Override(o.origin.clone()),
                    None => Location::File { line: 0, col: 0 },
                }
            } else {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                Location::File { line, col }
            }
        });
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start != outer.end
}

/// The field path whose key or value contains `span`, deepest match first. Tables defined by a
/// `[header]` have the header as their span, so children are searched whatever the parent's span.
fn path_at(table: &DeTable<'_>, span: &Range<usize>, out: &mut Vec<String>) {
    if let Some(found) = find_in_table(table, span) {
        out.extend(found);
    }
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    for (k, v) in table.iter() {
        if let Some(mut deeper) = find_in_value(v, span) {
            deeper.insert(0, format!(".{}", k.as_ref()));
            return Some(deeper);
        }
    }
    for (k, v) in table.iter() {
        if contains(&k.span(), span) || contains(&v.span(), span) {
            return Some(vec![format!(".{}", k.as_ref())]);
        }
    }
    None
}

/// Segments below `v` (not including `v` itself) that contain `span`.
fn find_in_value(v: &Value<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    match v.as_ref() {
        DeValue::Table(t) => find_in_table(t, span),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if let Some(mut deeper) = find_in_value(item, span) {
                    deeper.insert(0, format!("[{i}]"));
                    return Some(deeper);
                }
            }
            a.iter()
                .position(|item| contains(&item.span(), span))
                .map(|i| vec![format!("[{i}]")])
        }
        _ => None,
    }
}

/// The span of the key at `path` (`a.b[2].c`), or of the closest existing parent.
fn span_of(root: &DeTable<'_>, path: &str) -> Option<Range<usize>> {
    let mut best = None;
    let mut table = Some(root);
    let mut current: Option<&Value<'_>> = None;
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let t = match (table, current.map(|c| c.as_ref())) {
            (Some(t), None) => t,
            (_, Some(DeValue::Table(t))) => t,
            _ => break,
        };
        let Some((k, v)) = t.get_key_value(name) else {
            break;
        };
        best = Some(k.span());
        current = Some(v);
        table = None;
        if let Some(i) = index {
            match v.as_ref() {
                DeValue::Array(a) if i < a.len() => {
                    best = Some(a[i].span());
                    current = Some(&a[i]);
                }
                _ => break,
            }
        }
    }
    best
}
