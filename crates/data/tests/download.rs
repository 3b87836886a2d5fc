//! Downloads from a local HTTP server on 127.0.0.1 serving generated files.
#![cfg(feature = "download")]

use kerno_data::download::{fetch_missing, RemoteFile};
use kerno_data::DataError;
use kerno_testkit::files::gzip;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// Serves `files` (path → body) to at most `requests` connections, then stops.
fn serve(files: Vec<(&'static str, Vec<u8>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(body);
                }
                None => {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        }
    });
    base
}

fn sha256_hex(bytes: &[u8]) -> &'static str {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Box::leak(hex.into_boxed_str())
}

#[test]
fn verified_files_are_saved_and_a_dead_mirror_is_skipped() {
    let content = b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x08\x09".to_vec();
    let base = serve(vec![("/good/labels.gz", gzip(&content))], 4);
    let dest = tempfile::tempdir().unwrap();
    let files = [RemoteFile {
        name: "labels.gz",
        sha256: sha256_hex(&content),
    }];
    let mirrors = [format!("{base}/dead/"), format!("{base}/good/")];
    let mirrors: Vec<&str> = mirrors.iter().map(String::as_str).collect();
    fetch_missing(&files, &mirrors, dest.path()).unwrap();
    let saved = std::fs::read(dest.path().join("labels.gz")).unwrap();
    assert_eq!(saved, gzip(&content));
}

#[test]
fn a_checksum_mismatch_is_rejected_and_leaves_nothing_behind() {
    let content = b"not what was promised".to_vec();
    let base = serve(vec![("/m/data.gz", gzip(&content))], 2);
    let dest = tempfile::tempdir().unwrap();
    let files = [RemoteFile {
        name: "data.gz",
        sha256: sha256_hex(b"the real content"),
    }];
    let mirror = format!("{base}/m/");
    let err = fetch_missing(&files, &[&mirror], dest.path()).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("data.gz"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dest.path()).unwrap().collect();
    assert!(left.is_empty(), "files were left behind: {left:?}");
}

/// A failed request is one message naming its URL once: an HTTP status, or
/// what stopped the connection.
#[test]
fn a_failed_request_names_its_url_once() {
    let dest = tempfile::tempdir().unwrap();
    let files = [RemoteFile {
        name: "data.gz",
        sha256: sha256_hex(b"anything"),
    }];
    let not_found = format!("{}/none/", serve(vec![], 1));
    // A port just freed: nothing listens there.
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/m/", listener.local_addr().unwrap())
    };
    for (mirror, reason) in [(not_found, "404"), (refused, "Connection Failed")] {
        let err = fetch_missing(&files, &[&mirror], dest.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DataError::Download { .. }), "{text}");
        assert_eq!(text.matches("data.gz").count(), 1, "{text}");
        assert!(text.contains(reason), "{text}");
    }
}
