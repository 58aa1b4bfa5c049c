//! Property tests over client-frame decoding: whatever arrives, decoding never panics, and every
//! refusal is a client error (`bad_request` or `unknown_type`) with a bounded message.

use chat_proto::{CLIENT_TYPES, Envelope, ErrorCode};
use proptest::prelude::*;
use serde_json::{Value, json};

fn check(text: &str) {
    match Envelope::decode(text) {
        Ok(env) => {
            assert!(CLIENT_TYPES.contains(&env.frame.type_name()));
            if let Some(r) = env.reference {
                assert!(r.chars().count() <= 64);
            }
        }
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownType),
                "{e:?}"
            );
            assert!(e.message.len() < 1024, "error message is bounded");
        }
    }
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map("[a-z_]{1,10}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like client frames: a real or made-up type and plausible fields of any type.
fn frame_like() -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        prop::sample::select(CLIENT_TYPES.to_vec()).prop_map(str::to_owned),
        "[a-z_]{0,12}"
    ];
    let fields = prop::collection::hash_map(
        prop::sample::select(vec![
            "room",
            "body",
            "client_id",
            "since",
            "epoch",
            "before",
            "after",
            "limit",
            "user",
            "members",
            "private",
            "seq",
            "status",
            "token",
            "ref",
            "traceparent",
        ]),
        json_value(),
        0..8,
    );
    (ty, fields).prop_map(|(ty, fields)| {
        let mut map: serde_json::Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        map.insert("type".into(), Value::String(ty));
        Value::Object(map)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        check(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        check(&v.to_string());
    }

    #[test]
    fn frame_shaped_objects_never_panic(v in frame_like()) {
        check(&v.to_string());
    }
}

#[test]
fn deeply_nested_json_is_refused_not_overflowing() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    check(&deep);
    let deep_obj = format!(
        "{{\"type\":\"ping\",\"x\":{}{}}}",
        "{\"a\":".repeat(50_000),
        "1".to_owned() + &"}".repeat(50_000)
    );
    check(&deep_obj);
}

/// Inputs that once broke a property, as the `frame_decode` fuzz target wrote them
/// (`fuzz/regressions/frame_decode/`; the target reads bytes as lossy UTF-8, so do we).
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/frame_decode"
    );
    for entry in std::fs::read_dir(dir).expect("fuzz/regressions/frame_decode exists") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        check(&String::from_utf8_lossy(&bytes));
    }
}
