//! The contract of the event decoder (protocol.md#nats, [`chat_bus::event::validate_stored`] and
//! [`chat_bus::event::decode_fanout`]) as an executable check, shared by
//! `tests/event_decode_fuzz.rs` (CI: proptest, the seeds under `fuzz/corpus/event_decode/` and
//! the files under `fuzz/regressions/event_decode/`) and the `event_decode` fuzz target
//! (`fuzz/`), which includes this file with `#[path]`. Both feed bytes to [`run_bytes`].
//!
//! Input format: the subject the entry was stored under, a `0xFF` byte (never a byte of
//! UTF-8), then the payload; without `0xFF`, the whole input is the payload of an entry of
//! `chat.room.lobby.msg`.

#![allow(dead_code)]

use async_nats::HeaderMap;
use chat_bus::event::{
    Event, LAST_SEQUENCE_HEADER, MAX_CLIENT_ID_CHARS, MAX_EVENT_BODY_CHARS, SEQUENCE_HEADER,
    decode_fanout, validate_stored,
};
use chat_bus::subjects;

/// Checks one stored entry: nothing panics, whatever the bytes; an invalid entry's reason is
/// short printable ASCII (a valid NATS header value and log field); a valid one belongs to its
/// subject's room, respects the v1.1 limits (ids, lengths, control characters), re-encodes to
/// an entry that validates to the same event, and has a header-safe dedup id; and the live feed
/// decodes the same entry to the same verdict.
// `if let Event::Message`: irrefutable until the v1.1 kinds (edit, delete, reaction) land.
#[allow(irrefutable_let_patterns)]
pub fn check(subject: &str, payload: &[u8]) {
    let verdict = validate_stored(subject, payload);
    match &verdict {
        Err(invalid) => {
            let reason = invalid.reason();
            assert!(
                !reason.is_empty()
                    && reason.len() <= 64
                    && reason.chars().all(|c| (' '..='~').contains(&c)),
                "reason {reason:?}"
            );
            assert!(!invalid.code().is_empty());
            // A dead-letter header carries it: conversion must not panic.
            let mut h = HeaderMap::new();
            h.insert("Chat-Invalid-Reason", reason.as_str());
        }
        Ok(candidate) => {
            let event = candidate.peek();
            assert_eq!(Some(event.room()), subjects::room_of(subject).as_ref());
            if let Event::Message(m) = event {
                let chars = m.body.chars().count();
                assert!((1..=MAX_EVENT_BODY_CHARS).contains(&chars));
                assert!(
                    m.body
                        .chars()
                        .all(|c| !c.is_control() || c == '\t' || c == '\n')
                );
                let cid = m.client_id.chars().count();
                assert!((1..=MAX_CLIENT_ID_CHARS).contains(&cid));
                assert!(!m.client_id.chars().any(char::is_control));
                assert!(m.ts >= 0);
                let msg_id = m.msg_id();
                assert!(!msg_id.contains(['\r', '\n']));
                let mut h = HeaderMap::new();
                h.insert(chat_bus::event::MSG_ID_HEADER, msg_id.as_str());
                let again = serde_json::to_vec(m).expect("an event encodes");
                let twice = validate_stored(subject, &again).expect("a re-encoded event is valid");
                assert_eq!(twice.peek(), event);
            }
        }
    }
    // The live feed (`chat.fanout.<room>`) judges the same bytes the same way.
    if let Some(room) = subjects::room_of(subject) {
        let mut h = HeaderMap::new();
        h.insert(SEQUENCE_HEADER, "7");
        h.insert(LAST_SEQUENCE_HEADER, "3");
        let entry = decode_fanout(Some(&h), payload, &room).expect("a republished entry");
        assert_eq!((entry.seq, entry.last_entry), (7, 3));
        assert_eq!(entry.candidate.as_ref().ok(), verdict.as_ref().ok());
        assert_eq!(entry.candidate.as_ref().err(), verdict.as_ref().err());
        assert!(
            decode_fanout(None, payload, &room).is_none(),
            "no seq, no entry"
        );
    }
}

/// Runs one input (see the module header).
pub fn run_bytes(data: &[u8]) {
    match data.iter().position(|&b| b == 0xFF) {
        Some(i) => check(&String::from_utf8_lossy(&data[..i]), &data[i + 1..]),
        None => check("chat.room.lobby.msg", data),
    }
}
