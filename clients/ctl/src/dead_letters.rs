//! `chatctl dead-letters`: the `CHAT_DLQ` stream, where a consumer puts what it can never handle
//! (today chat-history's archive writer: entries that are not events, protocol.md#nats).
//!
//! A dead letter keeps the original payload and headers, plus where it came from and why
//! ([`REASON_HEADER`], [`SEQ_HEADER`], [`SUBJECT_HEADER`]); its subject is
//! `chat.dlq.<consumer>`.
//!
//! Replay, after a fix, publishes the original payload to its original subject through JetStream,
//! so that it is stored again at the end of its room's order and every consumer validates it as
//! it does any event; then it deletes the dead letter. Each replay carries the message id
//! `chatctl-replay-<original seq>-<original subject>`: a replay retried after a failure between
//! the publish and the delete (or the same entry dead-lettered by two consumers) is dropped by
//! the stream's deduplication while its window (2 minutes) lasts, and the delete makes a second
//! `replay --all` find nothing to do afterwards. The original's own message id is not reused:
//! it would make the stream drop the replay as a duplicate of the invalid original. An event that
//! is still invalid is dead-lettered again, as a new dead letter.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use chat_bus::{event, subjects};
use serde::Serialize;

use crate::{Ctx, push_json, push_table, rfc3339};

/// The headers chat-history writes on a dead letter: why, its seq and subject where it came from.
pub use event::{
    DLQ_HEADER_PREFIX, DLQ_REASON_HEADER as REASON_HEADER, DLQ_SEQ_HEADER as SEQ_HEADER,
    DLQ_SUBJECT_HEADER as SUBJECT_HEADER,
};

/// A dead letter as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its seq in `CHAT_DLQ`: what `show` and `replay` take.
    pub seq: u64,
    /// When it was dead-lettered.
    pub time: String,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// Where it was published.
    pub subject: String,
    /// Its seq in its original stream.
    pub original_seq: Option<u64>,
    pub reason: String,
    pub size: usize,
}

/// A dead letter with its headers and payload (`show`).
#[derive(Debug, Serialize)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub letter: DeadLetter,
    pub headers: BTreeMap<String, String>,
    /// The payload as JSON when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Otherwise as text (invalid UTF-8 replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
}

/// What one replay did.
#[derive(Debug, Serialize)]
pub struct Replayed {
    /// Its seq in `CHAT_DLQ` (now deleted).
    pub seq: u64,
    pub subject: String,
    pub original_seq: Option<u64>,
    /// The seq the event got in its stream.
    pub new_seq: u64,
    /// The stream had it already (a replay retried within the deduplication window).
    pub duplicate: bool,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.as_str().to_owned())
}

fn letter_of(m: &async_nats::jetstream::message::StreamMessage) -> DeadLetter {
    let consumer = m
        .subject
        .as_str()
        .strip_prefix(subjects::dead_letter("").as_str())
        .unwrap_or(m.subject.as_str())
        .to_owned();
    DeadLetter {
        seq: m.sequence,
        time: rfc3339(m.time),
        consumer,
        subject: header(&m.headers, SUBJECT_HEADER).unwrap_or_default(),
        original_seq: header(&m.headers, SEQ_HEADER).and_then(|s| s.parse().ok()),
        reason: header(&m.headers, REASON_HEADER).unwrap_or_default(),
        size: m.payload.len(),
    }
}

/// The dead-letter stream, or `None` when nothing was ever dead-lettered.
async fn dlq(ctx: &Ctx) -> anyhow::Result<Option<Stream>> {
    match ctx.js.get_stream(subjects::DEAD_LETTER_STREAM).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if crate::is_stream_not_found(&e) => Ok(None),
        Err(e) => anyhow::bail!("cannot read stream {}: {e}", subjects::DEAD_LETTER_STREAM),
    }
}

fn is_no_message(e: &async_nats::jetstream::stream::RawMessageError) -> bool {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    match e.kind() {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(js) => {
            js.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

/// Entry `seq`, or `None` if there is none (never was, or already replayed).
async fn get(
    stream: &Stream,
    seq: u64,
) -> anyhow::Result<Option<async_nats::jetstream::message::StreamMessage>> {
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if is_no_message(&e) => Ok(None),
        Err(e) => anyhow::bail!("cannot read dead letter {seq}: {e}"),
    }
}

/// The dead letters there are now, oldest first.
pub async fn all(ctx: &Ctx) -> anyhow::Result<Vec<async_nats::jetstream::message::StreamMessage>> {
    let Some(mut stream) = dlq(ctx).await? else {
        return Ok(Vec::new());
    };
    let state = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {}: {e}", subjects::DEAD_LETTER_STREAM))?
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    // Replayed entries leave gaps: skip them, and stop once every entry is found.
    for seq in state.first_sequence.max(1)..=state.last_sequence {
        if out.len() as u64 >= state.messages {
            break;
        }
        if let Some(m) = get(&stream, seq).await? {
            out.push(m);
        }
    }
    Ok(out)
}

pub async fn list(ctx: &Ctx, out: &mut String) -> anyhow::Result<()> {
    let letters: Vec<DeadLetter> = all(ctx).await?.iter().map(letter_of).collect();
    if ctx.json {
        push_json(out, &letters);
        return Ok(());
    }
    if letters.is_empty() {
        out.push_str("no dead letters\n");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.seq.to_string(),
                l.time.clone(),
                l.consumer.clone(),
                l.subject.clone(),
                l.original_seq.map(|s| s.to_string()).unwrap_or("-".into()),
                l.size.to_string(),
                l.reason.clone(),
            ]
        })
        .collect();
    push_table(
        out,
        &[
            "SEQ", "TIME", "CONSUMER", "SUBJECT", "ORIG_SEQ", "BYTES", "REASON",
        ],
        &rows,
    );
    Ok(())
}

async fn get_existing(
    ctx: &Ctx,
    seq: u64,
) -> anyhow::Result<(Stream, async_nats::jetstream::message::StreamMessage)> {
    let Some(stream) = dlq(ctx).await? else {
        anyhow::bail!("no dead letter {seq}: nothing was ever dead-lettered");
    };
    match get(&stream, seq).await? {
        Some(m) => Ok((stream, m)),
        None => anyhow::bail!("no dead letter {seq} (see `chatctl dead-letters list`)"),
    }
}

pub async fn show(ctx: &Ctx, seq: u64, out: &mut String) -> anyhow::Result<()> {
    let (_, m) = get_existing(ctx, seq).await?;
    let headers: BTreeMap<String, String> = m
        .headers
        .iter()
        .map(|(k, v)| {
            let v: Vec<&str> = v.iter().map(|v| v.as_str()).collect();
            (k.to_string(), v.join(", "))
        })
        .collect();
    let payload = serde_json::from_slice::<serde_json::Value>(&m.payload).ok();
    let detail = DeadLetterDetail {
        letter: letter_of(&m),
        headers,
        payload_text: payload
            .is_none()
            .then(|| String::from_utf8_lossy(&m.payload).into_owned()),
        payload,
    };
    if ctx.json {
        push_json(out, &detail);
        return Ok(());
    }
    let l = &detail.letter;
    let line = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<13} {v}\n"));
    line(out, "seq", &l.seq.to_string());
    line(out, "time", &l.time);
    line(out, "consumer", &l.consumer);
    line(out, "subject", &l.subject);
    line(
        out,
        "original seq",
        &l.original_seq.map(|s| s.to_string()).unwrap_or("-".into()),
    );
    line(out, "reason", &l.reason);
    out.push_str("headers\n");
    for (k, v) in &detail.headers {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out.push_str(&format!("payload ({} bytes)\n", l.size));
    match (&detail.payload, &detail.payload_text) {
        (Some(v), _) => {
            out.push_str(&serde_json::to_string_pretty(v).unwrap_or_default());
            out.push('\n');
        }
        (None, Some(t)) => {
            out.push_str(&t.escape_debug().to_string());
            out.push('\n');
        }
        _ => {}
    }
    Ok(())
}

/// The headers a replay carries: the original's (trace context, …) without the dead-letter
/// ones and without JetStream's own (`Nats-*`: message id, expectations), then its own id.
fn replay_headers(original: &HeaderMap, msg_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.iter() {
        let n: &str = name.as_ref();
        if n.to_ascii_lowercase().starts_with("nats-") || n.starts_with(DLQ_HEADER_PREFIX) {
            continue;
        }
        for v in values {
            headers.append(name.clone(), v.clone());
        }
    }
    // After the other headers: the id must not be replaced (ECOSYSTEM.md pitfall).
    headers.insert(event::MSG_ID_HEADER, msg_id);
    headers
}

async fn replay_one(
    ctx: &Ctx,
    stream: &Stream,
    m: async_nats::jetstream::message::StreamMessage,
) -> anyhow::Result<Replayed> {
    let letter = letter_of(&m);
    let subject = letter.subject.clone();
    if subject.is_empty() || subject.contains(['*', '>', ' ']) || subject.contains(char::is_control)
    {
        anyhow::bail!(
            "dead letter {} has no original subject ({SUBJECT_HEADER}); not replayed",
            m.sequence
        );
    }
    let msg_id = match letter.original_seq {
        Some(orig) => format!("chatctl-replay-{orig}-{subject}"),
        None => format!("chatctl-replay-dlq{}", m.sequence),
    };
    let headers = replay_headers(&m.headers, &msg_id);
    let payload: Bytes = m.payload.clone();
    let ack = ctx
        .js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| anyhow::anyhow!("dead letter {}: publish failed: {e}", m.sequence))?
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "dead letter {}: {subject} did not take it ({e}); it stays in {}",
                m.sequence,
                subjects::DEAD_LETTER_STREAM
            )
        })?;
    stream.delete_message(m.sequence).await.map_err(|e| {
        anyhow::anyhow!(
            "dead letter {} was replayed (seq {}) but could not be removed ({e}); a replay \
             within 2 minutes is deduplicated, after that it would store the event again",
            m.sequence,
            ack.sequence
        )
    })?;
    Ok(Replayed {
        seq: m.sequence,
        subject,
        original_seq: letter.original_seq,
        new_seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Replays dead letter `seq`, or (`None`) every one there is now, oldest first; dead letters
/// that arrive meanwhile (a replayed event still invalid) are left for a later run.
pub async fn replay(ctx: &Ctx, seq: Option<u64>, out: &mut String) -> anyhow::Result<()> {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    match seq {
        Some(seq) => {
            let (stream, m) = get_existing(ctx, seq).await?;
            done.push(replay_one(ctx, &stream, m).await?);
        }
        None => {
            let letters = all(ctx).await?;
            if let Some(stream) = dlq(ctx).await? {
                for m in letters {
                    match replay_one(ctx, &stream, m).await {
                        Ok(r) => done.push(r),
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                }
            }
        }
    }
    if ctx.json {
        push_json(
            out,
            &serde_json::json!({"replayed": done, "failed": failed}),
        );
    } else if done.is_empty() && failed.is_empty() {
        out.push_str("no dead letters to replay\n");
    } else {
        for r in &done {
            out.push_str(&format!(
                "dead letter {} replayed to {} as seq {}{}\n",
                r.seq,
                r.subject,
                r.new_seq,
                if r.duplicate {
                    " (already there: deduplicated)"
                } else {
                    ""
                }
            ));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} dead letter(s) not replayed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_headers_drop_dead_letter_and_jetstream_headers() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-abc-def-01");
        h.insert(event::MSG_ID_HEADER, "dlq-42");
        h.insert("Nats-Expected-Last-Subject-Sequence", "3");
        h.insert(REASON_HEADER, "unknown event kind");
        h.insert(SEQ_HEADER, "42");
        h.insert(SUBJECT_HEADER, "chat.room.r.msg");
        let r = replay_headers(&h, "chatctl-replay-42-chat.room.r.msg");
        assert_eq!(r.get("traceparent").unwrap().as_str(), "00-abc-def-01");
        assert_eq!(
            r.get(event::MSG_ID_HEADER).unwrap().as_str(),
            "chatctl-replay-42-chat.room.r.msg"
        );
        for gone in [
            "Nats-Expected-Last-Subject-Sequence",
            REASON_HEADER,
            SEQ_HEADER,
            SUBJECT_HEADER,
        ] {
            assert!(r.get(gone).is_none(), "{gone}");
        }
    }
}
