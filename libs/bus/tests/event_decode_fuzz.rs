//! The event decoder's contract ([`support/event_model.rs`]) on every seed of the
//! `event_decode` fuzz target (`fuzz/corpus/event_decode/seed-*`), every input the fuzzer once
//! failed on (`fuzz/regressions/event_decode/`), and proptest's entries: arbitrary bytes, and
//! event-shaped JSON with control characters, oversized and multi-byte fields and mismatched
//! subjects (protocol.md#ws-limits, #nats).

#[path = "support/event_model.rs"]
mod event_model;

use proptest::prelude::*;
use serde_json::json;

#[test]
fn fuzz_seeds_and_regressions_stay_fixed() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz");
    let mut n = 0;
    for dir in ["corpus/event_decode", "regressions/event_decode"] {
        let Ok(entries) = std::fs::read_dir(format!("{root}/{dir}")) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if dir.starts_with("corpus") && !name.starts_with("seed-") {
                continue;
            }
            event_model::run_bytes(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} seed and regression files found");
}

/// Text mixing ordinary, multi-byte and control characters; `long`: sometimes around the body
/// ceiling (`MAX_EVENT_BODY_CHARS`).
fn text(long: bool) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        8 => proptest::char::range('a', 'z'),
        2 => proptest::char::range('\u{0}', '\u{1f}'),
        1 => Just('\u{7f}'),
        1 => Just('\u{85}'),
        2 => Just('é'),
        1 => Just('😀'),
    ];
    let long_len = if long { 16_380..16_390 } else { 0..80 };
    prop_oneof![
        6 => proptest::collection::vec(ch.clone(), 0..80),
        1 => proptest::collection::vec(ch, long_len),
    ]
    .prop_map(|v| v.into_iter().collect())
}

fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("chat.room.lobby.msg".to_owned()),
        1 => Just("chat.room.other.msg".to_owned()),
        1 => Just("chat.room.a b.msg".to_owned()),
        1 => Just("chat.nothing".to_owned()),
        1 => "[a-z.]{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        event_model::run_bytes(&data);
    }

    #[test]
    fn event_shaped_entries_keep_the_contract(
        subject in subject(),
        room in prop_oneof![3 => Just("lobby".to_owned()), 1 => text(false)],
        from in prop_oneof![3 => Just("alice".to_owned()), 1 => text(false)],
        body in text(true),
        client_id in prop_oneof![3 => "[a-z0-9]{1,64}", 1 => text(false)],
        ts in prop_oneof![3 => 0i64..2_000_000_000_000, 1 => any::<i64>()],
        kind in prop_oneof![4 => Just("message".to_owned()), 1 => text(false)],
    ) {
        let entry = json!({
            "v": 1, "kind": kind, "room": room, "from": from, "body": body,
            "client_id": client_id, "ts": ts,
        });
        event_model::check(&subject, entry.to_string().as_bytes());
    }
}
