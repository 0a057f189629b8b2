//! The command line as a person meets it: error lines, `config check`,
//! environment variables, colours and the broker flag of every subcommand.

use std::process::{Command, Output};

mod common;
use common::*;

/// The one `error:` line of a failed command (and that there is one only).
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", stdout(o));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{err}");
    assert_eq!(
        err.lines().last(),
        Some(lines[0]),
        "the error line comes last:\n{err}"
    );
    assert!(!err.contains("Caused by"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    lines[0].to_string()
}

#[test]
fn a_missing_file_is_one_line_and_the_full_form_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let args = |c: &mut Command| {
        c.args(["replay", "--progress", "none", "--input"])
            .arg(dir.path().join("nope.jsonl"))
            .arg("--output-dir")
            .arg(dir.path().join("out"));
    };
    let mut c = siklus();
    args(&mut c);
    let o = c.output().unwrap();
    let line = error_line(&o);
    assert!(line.contains("nope.jsonl"), "{line}");
    assert!(line.contains("No such file"), "{line}");
    assert!(line.ends_with("(check the path)"), "{line}");
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    // RUST_BACKTRACE=1 and -v print every cause on its own line.
    let mut c = siklus();
    args(&mut c);
    let o = c.env("RUST_BACKTRACE", "1").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Caused by:"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("hint: check the path"),
        "{}",
        stderr(&o)
    );

    let mut c = siklus();
    c.arg("-v");
    args(&mut c);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Caused by:"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Stack backtrace"), "{}", stderr(&o));
}

#[test]
fn configuration_mistakes_name_the_key_and_what_to_try() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[processor]\nstate_dri = \"x\"\n").unwrap();
    let o = siklus()
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .output()
        .unwrap();
    let line = error_line(&o);
    assert!(line.contains("state_dri"), "{line}");
    assert!(line.contains("siklus config check"), "{line}");

    let o = siklus()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .args(["config", "check"])
        .output()
        .unwrap();
    let line = error_line(&o);
    assert!(line.contains("missing.toml does not exist"), "{line}");
    assert!(line.contains("--config or SIKLUS_CONFIG"), "{line}");

    // SIKLUS_CONFIG names the file as --config does.
    let o = siklus()
        .env("SIKLUS_CONFIG", &bad)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(error_line(&o).contains("state_dri"));
}

#[test]
fn an_unknown_environment_section_or_key_is_an_error() {
    for (var, says) in [
        ("SIKLUS_PROCESOR__GROUP_ID", "unknown section \"procesor\""),
        ("SIKLUS_PROCESSOR__GROP_ID", "grop_id"),
        ("SIKLUS_PROCESSOR_GROUP_ID", "SIKLUS_PROCESSOR__GROUP_ID"),
    ] {
        let o = siklus()
            .env(var, "g")
            .args(["config", "check"])
            .output()
            .unwrap();
        let line = error_line(&o);
        assert!(line.contains(says), "{var}: {line}");
    }
    // Variables that are not configuration are left alone; keys apply.
    let o = siklus()
        .env("SIKLUS_LOG", "warn")
        .env("SIKLUS_LOG_FORMAT", "json")
        .env("SIKLUS_CHAOS_SEED", "3")
        .env("SIKLUS_FAULT_ABORT_AFTER_STEPS", "1000")
        .env("SIKLUS_PROCESSOR__GROUP_ID", "from-env")
        .env("SIKLUS_KAFKA__LINGER_MS", "7")
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let shown: toml::Table = toml::from_str(&stdout(&o)).unwrap();
    assert_eq!(shown["processor"]["group_id"].as_str(), Some("from-env"));
    assert_eq!(shown["kafka"]["linger.ms"].as_str(), Some("7"));
}

#[test]
fn config_check_prints_toml_with_every_secret_masked() {
    let secrets = [
        "sasl-pw-1",
        "keypw-2",
        "keystorepw-3",
        "truststorepw-4",
        "oauth-secret-5",
        "plugin-secret-6",
        "registry-pw-7",
        "registry-url-pw-8",
        "http-url-pw-9",
        "read-api-token-10",
    ];
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("siklus.toml");
    std::fs::write(
        &f,
        format!(
            r#"[kafka]
"bootstrap.servers" = "b1:9093,b2:9093"
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "svc"
"sasl.password" = "{}"
"ssl.key.password" = "{}"
"ssl.keystore.password" = "{}"
"ssl.truststore.password" = "{}"
"sasl.oauthbearer.client.secret" = "{}"
"plugin.api.secret" = "{}"
"linger.ms" = 5
"enable.idempotence" = true

[schema_registry]
url = "https://svc:{}@registry:8081"
basic_auth_user_info = "svc:{}"

[processor]
advertised_http = "http://admin:{}@siklus-1:9464"
http_token = "{}"
"#,
            secrets[0],
            secrets[1],
            secrets[2],
            secrets[3],
            secrets[4],
            secrets[5],
            secrets[7],
            secrets[6],
            secrets[8],
            secrets[9],
        ),
    )
    .unwrap();
    let o = siklus()
        .arg("--config")
        .arg(&f)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    for s in secrets {
        assert!(
            !out.contains(s) && !err.contains(s),
            "{s} shown:\n{out}\n{err}"
        );
    }
    let shown: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    let kafka = shown["kafka"].as_table().unwrap();
    for k in [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.truststore.password",
        "sasl.oauthbearer.client.secret",
        "plugin.api.secret",
    ] {
        assert_eq!(kafka[k].as_str(), Some("***"), "{k}");
    }
    assert_eq!(kafka["sasl.username"].as_str(), Some("svc"));
    assert_eq!(kafka["linger.ms"].as_str(), Some("5"));
    assert_eq!(kafka["enable.idempotence"].as_str(), Some("true"));
    let sr = shown["schema_registry"].as_table().unwrap();
    assert_eq!(sr["url"].as_str(), Some("https://svc:***@registry:8081"));
    assert_eq!(sr["basic_auth_user_info"].as_str(), Some("svc:***"));
    assert_eq!(
        shown["processor"]["advertised_http"].as_str(),
        Some("http://admin:***@siklus-1:9464")
    );
    assert_eq!(shown["processor"]["http_token"].as_str(), Some("***"));
    assert!(err.contains("configuration is valid"), "{err}");

    // The printed configuration is itself a valid configuration file.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &out).unwrap();
    let o = siklus()
        .arg("--config")
        .arg(&again)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), out);
}

#[test]
fn logs_carry_no_colour_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let gen = siklus()
        .args(["generate", "--customers", "20", "--output"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", stderr(&gen));
    let o = siklus()
        .env("SIKLUS_LOG", "info")
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("replay finished"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "ANSI escapes in captured logs:\n{err:?}"
    );

    // Nor on an error line.
    let o = siklus()
        .args(["inspect", "--state-dir"])
        .arg(dir.path().join("none"))
        .arg("ana")
        .output()
        .unwrap();
    assert!(!stderr(&o).contains('\x1b'), "{:?}", stderr(&o));
}

#[test]
fn every_kafka_subcommand_takes_bootstrap_servers_and_its_aliases() {
    let subcommands: [&[&str]; 6] = [
        &["run"],
        &["replay"],
        &["produce"],
        &["state", "restore"],
        &["bench", "load"],
        &["bench", "consume"],
    ];
    for sub in subcommands {
        let help = siklus().args(sub).arg("--help").output().unwrap();
        assert!(help.status.success(), "{sub:?}: {}", stderr(&help));
        let text = stdout(&help);
        assert!(text.contains("--bootstrap-servers"), "{sub:?}:\n{text}");
        assert!(text.contains("--bootstrap-server"), "{sub:?}:\n{text}");
        assert!(
            !text.contains("--brokers"),
            "{sub:?}: --brokers is hidden\n{text}"
        );
        for flag in ["--bootstrap-servers", "--bootstrap-server", "--brokers"] {
            // The flag parses (clap then prints the help and exits 0; an
            // unknown flag would be a usage error, exit 2).
            let o = siklus()
                .args(sub)
                .args([flag, "127.0.0.1:1", "--help"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{sub:?} {flag}: {}", stderr(&o));
        }
    }
    let help = siklus().arg("--help").output().unwrap();
    assert!(stdout(&help).contains("produce"), "{}", stdout(&help));
    assert!(stdout(&help).contains("Exit codes"), "{}", stdout(&help));
}

#[test]
fn unreachable_brokers_are_named_with_what_to_try() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        r#"{"event_id":"e1","customer_id":"ana","event_type":"page.viewed","occurred_at":"2024-01-01T10:00:00Z"}"#,
    )
    .unwrap();
    // Nothing listens on port 1; the three run side by side (each waits
    // for its metadata timeout).
    let spawn = |args: &[&str]| {
        siklus()
            .args(args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [
        spawn(&[
            "produce",
            "--input",
            "events.jsonl",
            "--bootstrap-server",
            "127.0.0.1:1",
        ]),
        spawn(&[
            "replay",
            "--from-topic",
            "--output-dir",
            "out",
            "--progress",
            "none",
            "--bootstrap-servers",
            "127.0.0.1:1",
        ]),
        spawn(&[
            "state",
            "restore",
            "--state-dir",
            "state",
            "--brokers",
            "127.0.0.1:1",
        ]),
    ];
    for child in children {
        let o = child.wait_with_output().unwrap();
        let line = error_line(&o);
        assert!(
            line.starts_with("error: cannot reach the Kafka brokers at 127.0.0.1:1: "),
            "{line}"
        );
        assert!(
            line.ends_with(
                "(is a broker running and reachable? set --bootstrap-servers or \
                 kafka.\"bootstrap.servers\")"
            ),
            "{line}"
        );
    }
}
