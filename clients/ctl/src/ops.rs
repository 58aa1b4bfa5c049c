//! `chatctl disconnect` and `chatctl room`.

use chat_bus::api::{Disconnect, RoomInfo, rooms};
use chat_bus::{rpc, stream, subjects};
use chat_proto::{ErrorCode, RoomId, UserId};
use serde::Serialize;

use crate::args::Args;
use crate::{Ctx, UsageError, push_json};

/// The most of a reason a close frame carries (CONTRACT: 120 bytes).
pub const MAX_REASON_BYTES: usize = 120;

/// A checked `disconnect`.
#[derive(Debug)]
pub struct DisconnectPlan {
    pub user: UserId,
    pub reason: String,
}

impl DisconnectPlan {
    pub fn of(args: &Args) -> Result<DisconnectPlan, UsageError> {
        let user = &args.operands(1, 1)?[0];
        let user = UserId::new(user).map_err(|e| UsageError(format!("user {user:?}: {e}")))?;
        let reason = args.value("reason").unwrap_or_default().to_owned();
        if reason.len() > MAX_REASON_BYTES {
            return Err(UsageError(format!(
                "--reason is {} bytes; a close frame carries at most {MAX_REASON_BYTES}",
                reason.len()
            )));
        }
        if reason.chars().any(char::is_control) {
            return Err(UsageError(
                "--reason must not contain control characters".into(),
            ));
        }
        Ok(DisconnectPlan { user, reason })
    }
}

/// Publishes the [`Disconnect`] every edge listens for; edges close the user's sessions with
/// 4001. Core NATS: the edges do not answer, so this confirms only that the server took the
/// message (and did not refuse it).
pub async fn disconnect(ctx: &Ctx, plan: DisconnectPlan, out: &mut String) -> anyhow::Result<()> {
    let subject = subjects::user_disconnect(&plan.user);
    let payload = serde_json::to_vec(&Disconnect {
        user: plan.user.clone(),
        reason: plan.reason,
    })?;
    ctx.nats
        .publish(subject.clone(), payload.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot publish on {subject}: {e}"))?;
    tokio::time::timeout(ctx.timeout, ctx.nats.flush())
        .await
        .map_err(|_| anyhow::anyhow!("NATS did not take the disconnect in time"))?
        .map_err(|e| anyhow::anyhow!("NATS did not take the disconnect: {e}"))?;
    // A flush only writes; a round trip after the publish makes a refusal of it (a permission
    // violation, reported asynchronously) arrive before we say it was sent.
    let _ = ctx.js.query_account().await;
    let refused = ctx.refusals.take();
    if !refused.is_empty() {
        anyhow::bail!(
            "NATS refused the disconnect on {subject}: {} (check the permissions of the NATS \
             user, docs/deploy.md#chatctl)",
            refused.join("; ")
        );
    }
    if ctx.json {
        push_json(
            out,
            &serde_json::json!({"user": plan.user, "subject": subject, "sent": true}),
        );
    } else {
        out.push_str(&format!(
            "disconnect sent: every edge closes {}'s sessions (4001)\n",
            plan.user
        ));
    }
    Ok(())
}

/// `room` output.
#[derive(Debug, Serialize)]
pub struct RoomReport {
    #[serde(flatten)]
    pub info: RoomInfo,
    /// The seq of its newest event in the `CHAT` stream (0: none kept).
    pub last_seq: u64,
}

pub async fn room(ctx: &Ctx, room: RoomId, out: &mut String) -> anyhow::Result<()> {
    let info: RoomInfo = match rpc::call(
        &ctx.nats,
        &rooms::Members { room: room.clone() },
        ctx.timeout,
    )
    .await
    {
        Ok(info) => info,
        Err(e) if e.code == ErrorCode::NotFound => anyhow::bail!("no room {room}"),
        Err(e) if e.code == ErrorCode::Unavailable => {
            anyhow::bail!(
                "chat-history did not answer on {}: is it running?",
                subjects::ROOMS
            )
        }
        Err(e) => anyhow::bail!("room {room}: {} ({})", e.message, e.code.as_str()),
    };
    let chat = ctx
        .js
        .get_stream(subjects::STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {}: {e}", subjects::STREAM))?;
    let last_seq = stream::last_seq(&chat, &room)
        .await
        .map_err(|_| anyhow::anyhow!("cannot read stream {}", subjects::STREAM))?;
    let report = RoomReport { info, last_seq };
    if ctx.json {
        push_json(out, &report);
        return Ok(());
    }
    let i = &report.info;
    out.push_str(&format!("room      {}\n", i.room));
    out.push_str(&format!("kind      {}\n", i.kind.as_str()));
    out.push_str(&format!("last seq  {}\n", report.last_seq));
    out.push_str(&format!("members   {}\n", i.members.len()));
    for m in &i.members {
        out.push_str(&format!("  {m}\n"));
    }
    Ok(())
}
