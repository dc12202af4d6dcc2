use majordomo_core::Override;

use super::*;

fn check_text(
    text: &str,
    label: &str,
    ov: &[Override],
) -> Result<Config, majordomo_core::Problems> {
    majordomo_core::load::check_text::<Config>(text, label, ov)
}

#[test]
fn embedded_default_is_the_default_config() {
    let cfg = check_text(DEFAULT_TOML, "default.toml", &[]).expect("default config is valid");
    assert_eq!(cfg, Config::default());
}

/// Every field of the config appears in the commented default, so none goes undocumented.
#[test]
fn default_toml_documents_every_field() {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if prefix.is_empty() && v.is_array() {
                    // An array section ([[pipeline]]): documented by a commented example entry,
                    // whose fields the section's own tests check.
                    out.push(format!("[[{k}]]"));
                } else if v.is_object() {
                    walk(&path, v, out);
                } else if let Some(first) = v
                    .as_array()
                    .and_then(|a| a.first())
                    .filter(|f| f.is_object())
                {
                    // Arrays of tables ([[check]]): their fields, documented under [[check]].
                    walk(&path, first, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut fields = Vec::new();
    walk(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut fields,
    );
    // Arrays of tables (`[[program]]`) are empty by default: check one default element.
    fields.retain(|f| f != "program");
    if let serde_json::Value::Object(map) =
        serde_json::to_value(majordomo_supervisor::ProgramConfig::default()).unwrap()
    {
        fields.extend(map.keys().map(|k| format!("program.{k}")));
    }
    let mut section = String::new();
    let mut documented = Vec::new();
    for line in DEFAULT_TOML.lines() {
        let l = line.trim_start_matches('#').trim();
        if l.starts_with("[[") {
            documented.push(l.to_string());
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some((k, _)) = l.split_once(" = ")
            && !k.contains(' ')
        {
            documented.push(format!("{section}.{k}"));
        }
    }
    for f in fields {
        // An empty array of tables ([[notifier]]) is documented by its commented example.
        let prefix = format!("{f}.");
        assert!(
            documented.contains(&f) || documented.iter().any(|d| d.starts_with(&prefix)),
            "field {f} is missing from default.toml"
        );
    }
}

#[test]
fn reports_every_problem_with_its_line() {
    let text = "[log]\nlevel = \"loud!!\"\nmax_files = \"five\"\n\n[control]\nsocket_mode = \"0777\"\nbogus = 1\n\n[nope]\nx = 1\n";
    let err = check_text(text, "bad.toml", &[]).unwrap_err();
    let lines = err.lines();
    // Deserialization problems in two sections and an unknown section, all at once.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("bad.toml:3:") && l.contains("log.max_files")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("bad.toml:7:")
            && l.contains("control.bogus")
            && l.contains("unknown field")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("bad.toml:9:") && l.contains("unknown section `nope`")),
        "{lines:#?}"
    );
}

#[test]
fn semantic_problems_are_located_by_path() {
    let text = "[log]\nlevel = \"loud!!\"\n\n[control]\nsocket_mode = \"0777\"\n";
    let err = check_text(text, "bad.toml", &[]).unwrap_err();
    let lines = err.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("bad.toml:2:1: log.level: invalid log filter"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("bad.toml:5:1: control.socket_mode:"),
        "{lines:#?}"
    );
}

#[test]
fn syntax_errors_have_lines() {
    let err = check_text("[log]\nlevel = \n", "x.toml", &[]).unwrap_err();
    assert!(err.lines()[0].starts_with("x.toml:2:"), "{:?}", err.lines());
}

#[test]
fn env_and_flags_override_the_file_in_order() {
    let env = Override::from_env(vec![
        ("MAJORDOMO_LOG__LEVEL".to_string(), "debug".to_string()),
        ("MAJORDOMO_LOG__MAX_FILES".to_string(), "9".to_string()),
        (
            "MAJORDOMO_DAEMON__GRACE_PERIOD".to_string(),
            "3s".to_string(),
        ),
        ("MAJORDOMO_HOME".to_string(), "/ignored".to_string()),
    ]);
    assert_eq!(env.len(), 3);
    let mut all = env.clone();
    all.push(Override::flag("--log-level", &["log", "level"], "trace"));
    let cfg = check_text("[log]\nlevel = \"warn\"\n", "f.toml", &all).unwrap();
    assert_eq!(cfg.log.level, "trace");
    assert_eq!(cfg.log.max_files, 9);
    assert_eq!(cfg.daemon.grace_period, Dur::secs(3));
    let cfg = check_text("[log]\nlevel = \"warn\"\n", "f.toml", &env).unwrap();
    assert_eq!(cfg.log.level, "debug");
}

#[test]
fn bad_overrides_name_their_variable() {
    let env = Override::from_env(vec![
        ("MAJORDOMO_LOG__MAX_FILES".to_string(), "lots".to_string()),
        ("MAJORDOMO_BOGUS__X".to_string(), "1".to_string()),
    ]);
    let err = check_text("", "f.toml", &env).unwrap_err();
    let lines = err.lines();
    assert!(lines.iter().any(|l| l.starts_with("environment variable MAJORDOMO_LOG__MAX_FILES: log.max_files:")), "{lines:#?}");
    assert!(
        lines.iter().any(
            |l| l.starts_with("environment variable MAJORDOMO_BOGUS__X:")
                && l.contains("unknown section")
        ),
        "{lines:#?}"
    );
}

#[test]
fn secrets_are_redacted_when_serialized() {
    let cfg = check_text("[control]\ntoken = \"s3cret\"\n", "f.toml", &[]).unwrap();
    assert_eq!(
        cfg.control.token.as_ref().map(|t| t.expose()),
        Some("s3cret")
    );
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(!json.contains("s3cret"));
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

#[cfg(unix)]
#[test]
fn unknown_users_and_groups_are_config_errors() {
    let text = "[control]\nallowed_users = [\"root\", \"1234\", \"no-such-user-xyz\"]\nsocket_group = \"no-such-group-xyz\"\nsocket_mode = \"0660\"\n";
    let err = check_text(text, "f.toml", &[]).unwrap_err();
    let lines = err.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("f.toml:2:") && lines[0].contains("control.allowed_users[2]"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("f.toml:3:") && lines[1].contains("control.socket_group"),
        "{lines:#?}"
    );
}
