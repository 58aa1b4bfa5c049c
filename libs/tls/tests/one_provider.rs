//! The workspace's Cargo.lock holds one TLS stack: rustls with ring (one copy of rustls,
//! tokio-rustls and webpki-roots), no aws-lc, no native-tls/OpenSSL, and tungstenite without a
//! TLS feature of its own (chat-tls does TLS for the clients). A dependency or feature that pulls
//! in a second crypto provider (and rustls's provider-choice panic at run time) fails here.

use std::collections::BTreeMap;

/// Package name → the `dependencies` lists of each locked version.
fn lock() -> BTreeMap<String, Vec<Vec<String>>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    let text = std::fs::read_to_string(path).expect("read Cargo.lock");
    let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .expect("a name")
            .trim_matches('"')
            .to_owned();
        let deps = block
            .split_once("dependencies = [")
            .map(|(_, rest)| {
                rest.split(']')
                    .next()
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.trim().trim_end_matches(',').trim_matches('"'))
                    .filter(|l| !l.is_empty())
                    .map(|l| l.split(' ').next().unwrap_or(l).to_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.entry(name).or_default().push(deps);
    }
    out
}

#[test]
fn one_tls_stack_ring_only() {
    let lock = lock();
    for banned in [
        "aws-lc-rs",
        "aws-lc-sys",
        "aws-lc-fips-sys",
        "native-tls",
        "tokio-native-tls",
        "openssl",
        "openssl-sys",
    ] {
        assert!(
            !lock.contains_key(banned),
            "Cargo.lock holds {banned}: a second TLS/crypto stack (use rustls with ring, see chat-tls)"
        );
    }
    for single in [
        "rustls",
        "tokio-rustls",
        "webpki-roots",
        "tungstenite",
        "ring",
    ] {
        let n = lock.get(single).map_or(0, Vec::len);
        assert_eq!(n, 1, "Cargo.lock holds {n} versions of {single}");
    }
    for ws in ["tungstenite", "tokio-tungstenite"] {
        for deps in &lock[ws] {
            assert!(
                !deps
                    .iter()
                    .any(|d| d.contains("rustls") || d.contains("webpki")),
                "{ws} is built with a TLS feature ({deps:?}); chat-tls::connect_ws does TLS"
            );
        }
    }
}
