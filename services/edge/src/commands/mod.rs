//! What each client frame does, one file per frame (mini-redis's `cmd/` shape). Each command is
//! a method of the session, run once [`crate::dispatch::classify`] has accepted the frame (size,
//! rate, decoding, membership and field limits are checked there): it asks the service that owns
//! the answer (over NATS), then answers with a frame of its own (`joined`, `left`, `history`…),
//! queues its reply behind earlier sends (`send` and the lifecycle frames), or returns the error
//! the session sends back with the frame's `ref`. The one dispatch is `Session::handle_frame`,
//! below.
//!
//! | frame | file |
//! |---|---|
//! | `auth` (a refreshed token) | `auth.rs` |
//! | `ping` | `ping.rs` |
//! | `send` | `send.rs` |
//! | `send` with `reply_to`/`thread`, `edit`, `delete`, `react` | `lifecycle.rs` |
//! | `join` | `join.rs` |
//! | `leave` | `leave.rs` |
//! | `create` | `create.rs` |
//! | `invite` | `invite.rs` |
//! | `open_dm` | `open_dm.rs` |
//! | `history` | `history.rs` |
//! | `search` | `search.rs` |
//! | `typing` | `typing.rs` |
//! | `read` | `read.rs` |
//! | `status` | `status.rs` |
//! | `presence` | `presence.rs` |

mod auth;
mod create;
mod history;
mod invite;
mod join;
mod leave;
mod lifecycle;
mod open_dm;
mod ping;
mod presence;
mod read;
pub mod search;
pub(crate) mod send;
mod status;
mod typing;

use chat_bus::api::ApiError;
use chat_proto::{ClientFrame, Envelope};

use crate::session::{Flow, Session, Socket};

impl<S: Socket> Session<S> {
    /// Carries out a frame that [`crate::dispatch::classify`] accepted (membership and field
    /// limits are checked there).
    pub(crate) async fn handle_frame(&mut self, env: Envelope) -> Result<Flow, ApiError> {
        let Envelope {
            reference,
            traceparent,
            frame,
        } = env;
        match frame {
            ClientFrame::Auth { token } => self.on_auth(token).await?,
            ClientFrame::Ping => self.on_ping(reference).await?,
            ClientFrame::Send {
                room,
                body,
                client_id,
                reply_to: None,
                thread: None,
            } => {
                self.on_send(reference, traceparent, room, body, client_id)
                    .await?
            }
            frame @ (ClientFrame::Send { .. }
            | ClientFrame::Edit { .. }
            | ClientFrame::Delete { .. }
            | ClientFrame::React { .. }) => {
                lifecycle::handle(self, reference, traceparent, frame).await?
            }
            ClientFrame::Join { room, since, epoch } => {
                self.on_join(reference, room, since, epoch).await?
            }
            ClientFrame::Leave { room } => self.on_leave(reference, room).await?,
            ClientFrame::Create {
                room,
                private,
                members,
            } => self.on_create(reference, room, private, members).await?,
            ClientFrame::Invite { room, user } => self.on_invite(reference, room, user).await?,
            ClientFrame::OpenDm { user } => self.on_open_dm(reference, user).await?,
            ClientFrame::History {
                room,
                before,
                after,
                limit,
                thread,
            } => {
                self.on_history(reference, room, before, after, limit, thread)
                    .await?
            }
            ClientFrame::Search {
                query,
                room,
                limit,
                before,
            } => {
                let search = search::Search {
                    query,
                    room,
                    limit,
                    before,
                };
                self.on_search(reference, search).await?
            }
            ClientFrame::Typing { room } => self.on_typing(room).await?,
            ClientFrame::Read { room, seq } => self.on_read(room, seq).await?,
            ClientFrame::Status { status } => self.on_status(status).await?,
            ClientFrame::Presence { room } => self.on_presence(reference, room).await?,
        }
        Ok(Flow::Continue)
    }
}
