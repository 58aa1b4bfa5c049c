//! The intake of integrations that have an account of their own (issue 15 item 8;
//! docs/deploy.md *Integrations and scopes*). Such an integration publishes the protocol.md#nats
//! event to `chat.room.<room>.msg` through JetStream, as any bot does; its account's service
//! import carries the publish to `chat.integration.<credential>.<room>.msg` in the chat account,
//! so the subject names the credential and the publisher cannot choose it. Here each one is
//! checked — a valid event (the stateless step of protocol.md#nats) whose `from` is one of the bot
//! identities configured for that credential (`CHAT_INTEGRATION_BOTS`) — and relayed to the
//! room's subject with `Nats-Msg-Id: <from>:<client_id>`. The answer is the `CHAT` stream's own
//! acknowledgement (its seq, `duplicate`), or a JetStream-shaped error the integration's client
//! reports as a failed publish: nothing refused is stored.
//!
//! An acknowledged relay is stored; a relay that gets no answer (the stream down) is answered
//! with nothing, and the integration's client retries as after any lost acknowledgement
//! (deduplication makes the retry safe).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chat_bus::event::{header_safe, validate};
use chat_bus::{subjects, trace};
use chat_proto::UserId;

/// The bot identities each integration credential may post as: `CHAT_INTEGRATION_BOTS`, as
/// `credential=bot,bot;credential=bot` (whitespace ignored). A credential not listed may post
/// as nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntegrationBots(BTreeMap<String, Vec<UserId>>);

impl IntegrationBots {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (cred, bots) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected credential=bot,bot"))?;
            let cred = cred.trim();
            let valid_cred = !cred.is_empty()
                && cred
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_cred {
                return Err(format!(
                    "{cred:?} is not a credential name ([A-Za-z0-9_-]+)"
                ));
            }
            let bots = bots
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(|b| UserId::new(b).map_err(|_| format!("{b:?} is not a user id")))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert(cred.to_owned(), bots);
        }
        Ok(IntegrationBots(out))
    }

    pub fn may_post_as(&self, credential: &str, from: &UserId) -> bool {
        self.0
            .get(credential)
            .is_some_and(|bots| bots.contains(from))
    }
}

/// A refusal as JetStream's clients read a failed publish (`{"error":{code,description}}`).
fn refusal(code: u16, description: &str) -> Bytes {
    serde_json::json!({ "error": { "code": code, "description": description } })
        .to_string()
        .into()
}

/// Checks and relays one publish; returns the answer for the integration.
pub async fn relay(
    nats: &async_nats::Client,
    bots: &IntegrationBots,
    timeout: Duration,
    msg: async_nats::Message,
) -> Bytes {
    let outcome = |o: &'static str| {
        metrics::counter!("chat_history_integration_relayed_total", "outcome" => o).increment(1)
    };
    let Some((credential, room)) = subjects::integration_of(&msg.subject) else {
        outcome("bad_subject");
        return refusal(400, "not an integration subject");
    };
    let event = match validate(&msg.payload, &room) {
        Ok(candidate) => candidate.peek().event().clone(),
        Err(why) => {
            outcome("invalid");
            return refusal(400, &format!("invalid event: {}", why.reason()));
        }
    };
    if !bots.may_post_as(credential, &event.from) {
        outcome("forbidden");
        tracing::info!(credential, from = %event.from, %room, "integration posting as an identity it does not own refused");
        return refusal(
            403,
            &format!(
                "{} is not a bot identity of this integration",
                header_safe(event.from.as_str(), 64)
            ),
        );
    }
    // The bot's headers (traceparent, expectations such as Nats-Expected-Last-Subject-Sequence)
    // go along; the message id is the contract's, whatever the bot set.
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert("Nats-Msg-Id", event.msg_id().as_str());
    // The relay's span (a child of the bot's trace, if it sent one) is the parent of what follows.
    trace::inject_current(&mut headers);
    let request = nats.request_with_headers(subjects::room_msg(&room), headers, msg.payload);
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(ack)) => {
            outcome("relayed");
            ack.payload
        }
        Ok(Err(e)) => {
            outcome("unavailable");
            tracing::warn!(error = %e, %room, "relaying an integration's event failed");
            refusal(503, "the stream did not answer")
        }
        Err(_) => {
            outcome("unavailable");
            refusal(503, "the stream did not answer in time")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_per_credential_parse_and_bind() {
        let bots =
            IntegrationBots::parse(" alerts = alertbot, deploybot ; bridge=irc-bridge;").unwrap();
        let u = |s: &str| UserId::new(s).unwrap();
        assert!(bots.may_post_as("alerts", &u("alertbot")));
        assert!(bots.may_post_as("alerts", &u("deploybot")));
        assert!(
            !bots.may_post_as("alerts", &u("irc-bridge")),
            "another credential's bot"
        );
        assert!(!bots.may_post_as("alerts", &u("alice")));
        assert!(!bots.may_post_as("unknown", &u("alertbot")));
        assert_eq!(
            IntegrationBots::parse("").unwrap(),
            IntegrationBots::default()
        );
        for bad in ["alerts", "al.erts=bot", "=bot", "alerts=not an id"] {
            assert!(IntegrationBots::parse(bad).is_err(), "{bad}");
        }
    }
}
