//! Property tests over the edge's pure frame path ([`chat_edge::dispatch::classify`]): whatever
//! a client sends, in whatever rhythm, the answer is a close with 1009 or 4029, an error with a
//! client-error code of the contract, or a frame that round-trips and passed every check. The
//! `frame_dispatch` fuzz target (`fuzz/`, run by `scripts/fuzz` in the long form) checks the same
//! model with coverage guidance; this is the part CI runs.

mod support {
    pub mod dispatch_model;
    pub mod headers_model;
}

use std::time::Instant;

use chat_edge::dispatch::{Action, Inbound, classify};
use chat_edge::ratelimit::TokenBucket;
use chat_proto::{ErrorCode, Limits};
use proptest::prelude::*;
use serde_json::json;
use support::dispatch_model::{CONTROLS, run_bytes};

/// Where a control character goes in an otherwise valid `send` (protocol.md#ws-limits).
#[derive(Debug, Clone, Copy)]
enum Spot {
    ClientId,
    Body,
    Ref,
    Traceparent,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes read as structured steps (frames shaped like client frames, mangled
    /// frames, raw text and binary frames, with pauses).
    #[test]
    fn structured_steps_keep_the_contract(
        setup in any::<[u8; 4]>(),
        steps in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut data = setup.to_vec();
        data.extend(steps.iter().copied().skip_while(|&b| b == b'\n'));
        run_bytes(&data);
    }

    /// Raw text frames, one after another with no pause.
    #[test]
    fn raw_text_frames_keep_the_contract(
        setup in any::<[u8; 4]>(),
        lines in prop::collection::vec("[^\n]{0,200}", 0..24),
    ) {
        let mut data = setup.to_vec();
        data.push(b'\n');
        data.extend(lines.join("\n").into_bytes());
        run_bytes(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// One control character anywhere in `client_id`, `ref` or `traceparent`, or one other than
    /// tab and newline in `body`: `bad_request`, with the ref echoed unless it is the bad field;
    /// any other character (including tab/newline in a body) changes nothing.
    #[test]
    fn control_characters_get_bad_request(
        spot in prop_oneof![Just(Spot::ClientId), Just(Spot::Body), Just(Spot::Ref), Just(Spot::Traceparent)],
        base in "[a-z0-9]{1,20}",
        at in 0usize..21,
        c in prop_oneof![prop::sample::select(CONTROLS.to_vec()), any::<char>()],
    ) {
        let mut field = base.clone();
        field.insert(at.min(field.len()), c);
        let mut frame = json!({
            "type": "send", "room": "r1", "body": "hello", "client_id": "c1",
            "ref": "q1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        });
        let key = match spot {
            Spot::ClientId => "client_id",
            Spot::Body => "body",
            Spot::Ref => "ref",
            Spot::Traceparent => "traceparent",
        };
        frame[key] = json!(field);
        let limits = Limits { max_body: 4000, max_frame: 65536, rate_per_s: 100 };
        let now = Instant::now();
        let mut bucket = TokenBucket::new(limits.rate_per_s, now);
        let text = frame.to_string();
        let action = classify(Inbound::Text(&text), now, &limits, &mut bucket, |_| true);
        let allowed_in_body = matches!(spot, Spot::Body) && (c == '\t' || c == '\n');
        if c.is_control() && !allowed_in_body {
            let Action::Refuse(r) = action else {
                panic!("{text}: accepted {action:?}");
            };
            prop_assert_eq!(r.code, ErrorCode::BadRequest);
            let echoed = (!matches!(spot, Spot::Ref)).then(|| "q1".to_owned());
            prop_assert_eq!(r.reference, echoed);
        } else {
            prop_assert!(matches!(action, Action::Handle(_)), "{} refused: {:?}", text, action);
        }
    }
}

/// Inputs that once broke the contract, as the fuzzer wrote them (`fuzz/regressions/`).
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/frame_dispatch"
    );
    for entry in std::fs::read_dir(dir).expect("fuzz/regressions/frame_dispatch exists") {
        run_bytes(&std::fs::read(entry.unwrap().path()).unwrap());
    }
}

/// The seed corpus (valid protocol.md#ws frames) passes the model too.
#[test]
fn seed_corpus_keeps_the_contract() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/frame_dispatch"
    );
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/frame_dispatch exists") {
        let path = entry.unwrap().path();
        // libFuzzer adds its own finds to the folder; the committed seeds are `seed-*`.
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            run_bytes(&std::fs::read(&path).unwrap());
            seen += 1;
        }
    }
    assert!(seen > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The NATS header building of a `send` (the `event_headers` fuzz target's model): never a
    /// panic, whatever the client id and traceparent hold.
    #[test]
    fn event_headers_never_panic(
        client_id in "(.|\r|\n){0,70}",
        traceparent in "(.|\r|\n){0,130}",
    ) {
        support::headers_model::check("alice", &client_id, &traceparent);
    }
}

/// The `event_headers` target's regressions and seeds (`fuzz/regressions/event_headers/`,
/// `fuzz/corpus/event_headers/seed-*`), replayed in CI.
#[test]
fn event_headers_regressions_stay_fixed() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz");
    let mut seen = 0;
    for dir in ["regressions/event_headers", "corpus/event_headers"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).expect("fuzz folder exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if dir.starts_with("regressions") || name.starts_with("seed-") {
                support::headers_model::run_bytes(&std::fs::read(&path).unwrap());
                seen += 1;
            }
        }
    }
    assert!(seen >= 4);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The v1.1 sizes and control characters agree between the frame path and the event rules
    /// (protocol.md#ws-limits, #nats): with `max_body` at its ceiling
    /// (`MAX_EVENT_BODY_CHARS`, the most `CHAT_MAX_BODY` may be), every `send` the edge accepts
    /// becomes an event that `validate` accepts (else it would be acked, then dead-lettered and
    /// never delivered), and a body one character over the ceiling is `too_large`.
    #[test]
    fn every_accepted_send_is_a_valid_event(
        len in prop_oneof![1usize..64, 16_370usize..=16_385],
        fill in prop_oneof![Just('a'), Just('é'), Just('😀'), Just('\t'), Just('\n'), Just('\u{1}'), Just('\u{85}')],
        client_id in "[ -~]{1,64}",
    ) {
        use chat_bus::event::{MAX_EVENT_BODY_CHARS, RoomEvent, validate};
        let body: String = std::iter::repeat_n(fill, len).collect();
        let frame = json!({"type": "send", "room": "r1", "body": body, "client_id": client_id});
        let limits = Limits { max_body: MAX_EVENT_BODY_CHARS, max_frame: 1 << 20, rate_per_s: 100 };
        let now = Instant::now();
        let mut bucket = TokenBucket::new(limits.rate_per_s, now);
        let text = frame.to_string();
        match classify(Inbound::Text(&text), now, &limits, &mut bucket, |_| true) {
            Action::Handle(env) => {
                let chat_proto::ClientFrame::Send { room, body, client_id, .. } = env.frame else {
                    panic!("a send decoded otherwise");
                };
                let event = RoomEvent::message(
                    room.clone(), chat_proto::UserId::new("alice").unwrap(), body, client_id, 1,
                );
                let payload = serde_json::to_vec(&event).unwrap();
                prop_assert!(validate(&payload, &room).is_ok(), "accepted but not an event: {}", len);
            }
            Action::Refuse(r) => {
                let control = fill.is_control() && fill != '\t' && fill != '\n';
                let too_long = len > MAX_EVENT_BODY_CHARS;
                prop_assert!(
                    (control && r.code == ErrorCode::BadRequest)
                        || (too_long && r.code == ErrorCode::TooLarge),
                    "refused {:?} of {} {:?}", r.code, len, fill
                );
            }
            Action::Close(code, _) => prop_assert!(false, "closed {}", code),
        }
    }
}
