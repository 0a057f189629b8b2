//! A short `siklus` run exports its spans over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and flushes them before exiting.
#![cfg(feature = "otlp")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

type Posts = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// An HTTP/1.1 server that records (path, content type, body) of each POST.
fn collector() -> (String, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let got: Posts = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let Ok(read) = conn.try_clone() else { return };
                let mut r = BufReader::new(read);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut len, mut ctype) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap_or((h, ""));
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.trim().parse().unwrap_or(0),
                            "content-type" => ctype = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    g.lock().unwrap().push((path, ctype, body));
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (addr, got)
}

#[test]
fn a_replay_exports_its_spans_over_otlp() {
    let (endpoint, got) = collector();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"event_id":"e1","customer_id":"ana","event_type":"account.signed_up","occurred_at":"2024-01-01T10:00:00Z"}"#,
            "\n",
            r#"{"event_id":"e2","customer_id":"ana","event_type":"order.completed","occurred_at":"2024-01-02T10:00:00Z","amount_minor":100,"currency":"EUR"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_siklus"))
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.path().join("out"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "siklus-otlp-test")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The process flushed before exiting: the spans are already here.
    let posts = got.lock().unwrap().clone();
    let traces: Vec<&(String, String, Vec<u8>)> =
        posts.iter().filter(|(p, _, _)| p == "/v1/traces").collect();
    assert!(!traces.is_empty(), "no POST to /v1/traces: {posts:?}");
    let (_, ctype, body) = traces[0];
    assert_eq!(ctype, "application/x-protobuf");
    assert!(!body.is_empty());
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("replay"), "the replay span is missing");
    assert!(text.contains("siklus-otlp-test"), "service.name is missing");
}
