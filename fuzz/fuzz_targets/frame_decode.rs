//! Any text → `Envelope::decode`: never panics; a refusal is a client error (`bad_request` or
//! `unknown_type`) with a bounded message; an accepted frame round-trips.

#![no_main]

use chat_proto::{CLIENT_TYPES, Envelope, ErrorCode, MAX_REF_CHARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the time they reach the session (the WebSocket layer checks).
    let text = String::from_utf8_lossy(data);
    match Envelope::decode(&text) {
        Ok(env) => {
            assert!(CLIENT_TYPES.contains(&env.frame.type_name()));
            if let Some(r) = &env.reference {
                assert!(r.chars().count() <= MAX_REF_CHARS);
            }
            let mut value = serde_json::to_value(&env.frame).unwrap();
            let map = value.as_object_mut().unwrap();
            if let Some(r) = &env.reference {
                map.insert("ref".into(), r.as_str().into());
            }
            if let Some(t) = &env.traceparent {
                map.insert("traceparent".into(), t.as_str().into());
            }
            assert_eq!(Envelope::decode(&value.to_string()), Ok(env));
        }
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownType),
                "{e:?}"
            );
            assert!(
                e.message.len() < 1024,
                "error message is bounded, got {} bytes",
                e.message.len()
            );
            if let Some(r) = &e.reference {
                assert!(r.chars().count() <= MAX_REF_CHARS);
            }
        }
    }
});
