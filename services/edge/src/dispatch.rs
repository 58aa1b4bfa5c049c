//! The pure part of a client frame's way through a session: size check, rate limit, decoding,
//! and the checks that need only the session's own state (room membership, the limits of
//! `send`). No I/O and no clock: the session loop passes `now`, then carries out the returned
//! [`Action`]. The fuzz targets (`fuzz/`) and `tests/dispatch_props.rs` drive it directly.

use std::time::Instant;

use chat_bus::api::ApiError;
use chat_proto::{ClientFrame, Envelope, ErrorCode, Limits, RoomId, ServerFrame, Status, close};

use crate::ratelimit::{TokenBucket, Verdict};

pub use chat_bus::post::{MAX_CLIENT_ID_CHARS, MAX_CREATE_MEMBERS};
use chat_bus::post::{check_client_id, check_emoji, check_query, check_send};

/// A data frame as it came off the socket.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    Text(&'a str),
    /// Not part of the protocol: only the size matters (a frame too big still closes).
    Binary {
        len: usize,
    },
}

/// What the session does with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Passed every check that needs no I/O: the session carries it out.
    Handle(Envelope),
    /// Answer with an error frame; the connection stays open.
    Refuse(Refusal),
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// An error answer to one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reference: Option<String>,
    pub code: ErrorCode,
    pub message: String,
    /// Set for `rate_limited` only: when the client may try again.
    pub retry_after_ms: Option<u64>,
    /// The frame's `type` when it decoded and a later check refused it, for metrics.
    pub frame_type: Option<&'static str>,
}

impl Refusal {
    fn new(reference: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            reference,
            code,
            message: message.into(),
            retry_after_ms: None,
            frame_type: None,
        }
    }

    pub fn into_frame(self) -> ServerFrame {
        ServerFrame::Error {
            reference: self.reference,
            code: self.code,
            message: self.message,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// Decides what becomes of one inbound frame: too big (close 1009), over the rate (refuse, or
/// close 4029 when it goes on), binary, undecodable, refused by a check of the session's own
/// state, or to be handled. Takes a token from `bucket` unless the frame is too big.
pub fn classify(
    inbound: Inbound<'_>,
    now: Instant,
    limits: &Limits,
    bucket: &mut TokenBucket,
    is_member: impl Fn(&RoomId) -> bool,
) -> Action {
    let len = match inbound {
        Inbound::Text(t) => t.len(),
        Inbound::Binary { len } => len,
    };
    if len > limits.max_frame {
        return Action::Close(close::TOO_BIG, "frame too large");
    }
    match bucket.check(now) {
        Verdict::Allow => {}
        Verdict::Limited { retry_after } => {
            let reference = match inbound {
                Inbound::Text(t) => Envelope::decode(t).ok().and_then(|e| e.reference),
                Inbound::Binary { .. } => None,
            };
            return Action::Refuse(Refusal {
                retry_after_ms: Some(retry_after.as_millis().max(1) as u64),
                ..Refusal::new(reference, ErrorCode::RateLimited, "too many frames")
            });
        }
        Verdict::Abuse => return Action::Close(close::RATE_ABUSE, "rate limit exceeded"),
    }
    let Inbound::Text(text) = inbound else {
        return Action::Refuse(Refusal::new(
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported",
        ));
    };
    let env = match Envelope::decode(text) {
        Ok(env) => env,
        Err(e) => return Action::Refuse(Refusal::new(e.reference, e.code, e.message)),
    };
    match validate(&env.frame, limits, is_member) {
        Ok(()) => Action::Handle(env),
        Err(e) => Action::Refuse(Refusal {
            frame_type: Some(env.frame.type_name()),
            ..Refusal::new(env.reference, e.code, e.message)
        }),
    }
}

/// The checks of a decoded frame that need no I/O: membership first (protocol.md#ws: every
/// operation on a room but `join` and `leave` requires it; `create` makes the room), then the
/// frame's own fields.
fn validate(
    frame: &ClientFrame,
    limits: &Limits,
    is_member: impl Fn(&RoomId) -> bool,
) -> Result<(), ApiError> {
    let member = |room: &RoomId| {
        if is_member(room) {
            Ok(())
        } else {
            Err(ApiError::forbidden("not a member of this room"))
        }
    };
    match frame {
        ClientFrame::Send {
            room,
            body,
            client_id,
            ..
        }
        | ClientFrame::Edit {
            room,
            body,
            client_id,
            ..
        } => {
            member(room)?;
            check_send(body, client_id, limits.max_body)
        }
        ClientFrame::Delete {
            room, client_id, ..
        } => {
            member(room)?;
            check_client_id(client_id)
        }
        ClientFrame::React {
            room,
            emoji,
            client_id,
            ..
        } => {
            member(room)?;
            check_emoji(emoji)?;
            check_client_id(client_id)
        }
        ClientFrame::History {
            room,
            before,
            after,
            ..
        } => {
            member(room)?;
            if before.is_some() && after.is_some() {
                return Err(ApiError::bad_request("give before or after, not both"));
            }
            Ok(())
        }
        ClientFrame::Search { query, room, .. } => {
            if let Some(room) = room {
                member(room)?;
            }
            check_query(query)
        }
        ClientFrame::Invite { room, .. }
        | ClientFrame::Typing { room }
        | ClientFrame::Read { room, .. }
        | ClientFrame::Presence { room } => member(room),
        ClientFrame::Status {
            status: Status::Offline,
        } => Err(ApiError::bad_request("status must be online, away or busy")),
        // Checked here, before any request: a create of 7,000 members once took 0.6 s of
        // chat-history's time (issue 15 item 9).
        ClientFrame::Create { members, .. } if members.len() > MAX_CREATE_MEMBERS => {
            Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!("create lists at most {MAX_CREATE_MEMBERS} members"),
            ))
        }
        ClientFrame::Auth { .. }
        | ClientFrame::Ping
        | ClientFrame::Join { .. }
        | ClientFrame::Leave { .. }
        | ClientFrame::Create { .. }
        | ClientFrame::OpenDm { .. }
        | ClientFrame::Status { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_body: 5,
        max_frame: 200,
        rate_per_s: 2,
    };

    fn refusal(action: Action) -> Refusal {
        match action {
            Action::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_too_big_closes_without_taking_a_token() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(LIMITS.rate_per_s, now);
        let big = "x".repeat(201);
        for _ in 0..5 {
            let action = classify(Inbound::Text(&big), now, &LIMITS, &mut bucket, |_| true);
            assert_eq!(action, Action::Close(close::TOO_BIG, "frame too large"));
        }
        let ping = Inbound::Text(r#"{"type":"ping"}"#);
        assert!(matches!(
            classify(ping, now, &LIMITS, &mut bucket, |_| true),
            Action::Handle(_)
        ));
    }

    #[test]
    fn checks_after_decoding_answer_with_the_frame_type_and_ref() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(100, now);
        let mut run = |text: &str, member: bool| {
            classify(Inbound::Text(text), now, &LIMITS, &mut bucket, |_| member)
        };
        let send = r#"{"type":"send","room":"r","body":"hello!","client_id":"c","ref":"9"}"#;
        let r = refusal(run(send, false));
        assert_eq!(
            (r.code, r.reference.as_deref(), r.frame_type),
            (ErrorCode::Forbidden, Some("9"), Some("send"))
        );
        assert_eq!(refusal(run(send, true)).code, ErrorCode::TooLarge);
        let both = r#"{"type":"history","room":"r","before":5,"after":1}"#;
        assert_eq!(refusal(run(both, true)).code, ErrorCode::BadRequest);
        let search = r#"{"type":"search","query":"deploy","room":"r","ref":"q"}"#;
        let r = refusal(run(search, false));
        assert_eq!(
            (r.code, r.frame_type),
            (ErrorCode::Forbidden, Some("search"))
        );
        assert!(matches!(run(search, true), Action::Handle(_)));
        let everywhere = r#"{"type":"search","query":"deploy"}"#;
        assert!(matches!(run(everywhere, false), Action::Handle(_)));
        for bad in [r#"" ""#, r#""a\u0000b""#, r#""\u0007""#] {
            let text = format!(r#"{{"type":"search","query":{bad}}}"#);
            assert_eq!(
                refusal(run(&text, true)).code,
                ErrorCode::BadRequest,
                "{text}"
            );
        }
        let offline = r#"{"type":"status","status":"offline"}"#;
        assert_eq!(refusal(run(offline, false)).code, ErrorCode::BadRequest);
        let join = r#"{"type":"join","room":"r"}"#;
        assert!(matches!(run(join, false), Action::Handle(_)));
        let create = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"u{i}\"")).collect();
            format!(
                r#"{{"type":"create","room":"big","members":[{}],"ref":"c"}}"#,
                members.join(",")
            )
        };
        let limits = Limits {
            max_frame: 1 << 20,
            ..LIMITS
        };
        let mut bucket = TokenBucket::new(100, now);
        let text = create(MAX_CREATE_MEMBERS + 1);
        let r = refusal(classify(
            Inbound::Text(&text),
            now,
            &limits,
            &mut bucket,
            |_| true,
        ));
        assert_eq!(
            (r.code, r.reference.as_deref(), r.frame_type),
            (ErrorCode::LimitExceeded, Some("c"), Some("create"))
        );
        let text = create(MAX_CREATE_MEMBERS);
        assert!(matches!(
            classify(Inbound::Text(&text), now, &limits, &mut bucket, |_| true),
            Action::Handle(_)
        ));
        let react = r#"{"type":"react","room":"r","seq":1,"emoji":"a b","client_id":"c"}"#;
        assert_eq!(refusal(run(react, true)).code, ErrorCode::BadRequest);
        assert_eq!(refusal(run(react, false)).code, ErrorCode::Forbidden);
        let react = r#"{"type":"react","room":"r","seq":1,"emoji":"👍","client_id":"c"}"#;
        assert!(matches!(run(react, true), Action::Handle(_)));
        let edit = r#"{"type":"edit","room":"r","seq":1,"body":"too long","client_id":"c"}"#;
        assert_eq!(refusal(run(edit, true)).code, ErrorCode::TooLarge);
        let delete = r#"{"type":"delete","room":"r","seq":1,"client_id":""}"#;
        assert_eq!(refusal(run(delete, true)).code, ErrorCode::BadRequest);
        let r = refusal(run("[]", true));
        assert_eq!((r.code, r.frame_type), (ErrorCode::BadRequest, None));
    }

    #[test]
    fn binary_frames_are_refused_and_floods_limited() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(LIMITS.rate_per_s, now);
        let binary = Inbound::Binary { len: 10 };
        let r = refusal(classify(binary, now, &LIMITS, &mut bucket, |_| true));
        assert_eq!(r.code, ErrorCode::BadRequest);
        classify(binary, now, &LIMITS, &mut bucket, |_| true);
        let ping = Inbound::Text(r#"{"type":"ping","ref":"p"}"#);
        let r = refusal(classify(ping, now, &LIMITS, &mut bucket, |_| true));
        assert_eq!(r.code, ErrorCode::RateLimited);
        assert_eq!(r.reference.as_deref(), Some("p"));
        assert!(r.retry_after_ms.is_some_and(|ms| ms >= 1));
    }
}
