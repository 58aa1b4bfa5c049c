//! The routes under `/api/v1` and the JSON they take and give (docs/openapi.json describes the
//! same, and `tests/tests/api.rs (`openapi_document_matches_the_router`)` checks the two agree). Every handler is the same few steps:
//! [`http::call`] checks the key, its scope and its rate; the handler checks its input with the
//! edge's rules ([`chat_bus::post`]) and asks the service that owns the answer over NATS.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use chat_bus::api::{
    ApiError, Disconnect, HistoryPage, HistoryRequest, NotifyState, NotifyStateRequest,
    PresenceReply, PresenceRequest, RoomInfo, SearchReply, SearchRequest, UserRooms, rooms,
};
use chat_bus::apikey::{ApiKeyRecord, Scope};
use chat_bus::post::{self, MAX_CREATE_MEMBERS};
use chat_bus::rpc;
use chat_bus::subjects;
use chat_proto::{ClientFrame, ErrorCode, RoomId, UserId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Api;
use crate::http::{HttpError, Target, call, no_route};

/// Every route: (method, path in OpenAPI's template syntax, operationId, handler). The router is
/// built from this table only, and docs/openapi.json must list exactly its routes (tests/tests/api.rs,
/// `openapi_document_matches_the_router`, which also calls each one to see that its method is the
/// one served).
fn table() -> Vec<(&'static str, &'static str, &'static str, MethodRouter<Api>)> {
    vec![
        ("post", "/api/v1/rooms", "createRoom", post(create_room)),
        ("get", "/api/v1/rooms/{room}", "getRoom", get(get_room)),
        (
            "put",
            "/api/v1/rooms/{room}/members/{user}",
            "addMember",
            put(add_member),
        ),
        (
            "delete",
            "/api/v1/rooms/{room}/members/{user}",
            "removeMember",
            delete(remove_member),
        ),
        (
            "post",
            "/api/v1/rooms/{room}/messages",
            "postMessage",
            post(post_message),
        ),
        (
            "get",
            "/api/v1/rooms/{room}/messages",
            "getHistory",
            get(history),
        ),
        (
            "patch",
            "/api/v1/rooms/{room}/messages/{seq}",
            "editMessage",
            patch(edit_message),
        ),
        (
            "delete",
            "/api/v1/rooms/{room}/messages/{seq}",
            "deleteMessage",
            delete(delete_message),
        ),
        (
            "post",
            "/api/v1/rooms/{room}/messages/{seq}/reactions",
            "react",
            post(react),
        ),
        (
            "get",
            "/api/v1/rooms/{room}/presence",
            "roomPresence",
            get(room_presence),
        ),
        ("get", "/api/v1/search", "search", get(search)),
        (
            "get",
            "/api/v1/presence",
            "usersPresence",
            get(users_presence),
        ),
        (
            "post",
            "/api/v1/users/{user}/disconnect",
            "disconnectUser",
            post(disconnect),
        ),
        (
            "get",
            "/api/v1/users/{user}/unread",
            "getUnread",
            get(unread),
        ),
    ]
}

/// Every route: (method, path, operationId).
pub fn routes() -> Vec<(&'static str, &'static str, &'static str)> {
    table().into_iter().map(|(m, p, o, _)| (m, p, o)).collect()
}

/// The API's router (under `/api/v1`; anything else is a JSON `404 not_found`).
pub fn router(api: Api) -> Router {
    let limit = api.config.max_request;
    let mut router = Router::new();
    for (_, path, _, handler) in table() {
        // Two entries of one path merge into one route with both methods.
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { no_route(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            no_route(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take this method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

// ---- request and response types (docs/openapi.json `components.schemas`) ----

/// `POST /rooms/{room}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The bot identity posting (one of the key's bots).
    pub from: UserId,
    pub body: String,
    /// Idempotency: a retry with the same `from` and `client_id` within the stream's
    /// deduplication window (2 minutes) is answered with the original, `duplicate: true`.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
}

/// `PATCH /rooms/{room}/messages/{seq}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    pub from: UserId,
    pub body: String,
    pub client_id: String,
}

/// `DELETE /rooms/{room}/messages/{seq}` (query string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteMessage {
    pub from: UserId,
    pub client_id: String,
}

/// `POST /rooms/{room}/messages/{seq}/reactions`: add (`on`, the default) or remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct React {
    pub from: UserId,
    pub emoji: String,
    #[serde(default = "yes")]
    pub on: bool,
    pub client_id: String,
}

fn yes() -> bool {
    true
}

/// What a message call made: the event's seq in the room (as the WebSocket `ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub room: RoomId,
    pub seq: u64,
    pub ts: i64,
    pub client_id: String,
    pub duplicate: bool,
}

/// `POST /rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub room: RoomId,
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub members: Vec<UserId>,
    /// Who the members are told invited them (a private room's `invite` notification); absent,
    /// each member is added as if they had joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<UserId>,
}

/// `GET /rooms/{room}/messages` (query string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// On whose behalf (`403 forbidden` unless a member); absent, a trusted reader.
    #[serde(default)]
    pub user: Option<UserId>,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub thread: Option<u64>,
    #[serde(default)]
    pub replay: Option<bool>,
}

/// `GET /search` (query string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub query: String,
    #[serde(default)]
    pub user: Option<UserId>,
    #[serde(default)]
    pub room: Option<RoomId>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub before: Option<u64>,
}

/// `GET /presence` (query string): `users=a,b,c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    pub users: String,
}

/// `GET /users/{user}/unread` (query string): `rooms=a,b`; absent, every room of the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnreadQuery {
    #[serde(default)]
    pub rooms: Option<String>,
}

/// `POST /users/{user}/disconnect` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectUser {
    /// The close frame's reason (at most 120 bytes are sent).
    #[serde(default)]
    pub reason: String,
}

/// The answer to a disconnect: every edge closes the user's sessions with 4001.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub user: UserId,
}

/// Most users one presence call may name.
pub const MAX_PRESENCE_USERS: usize = 1000;
/// Most rooms one unread call may name.
pub const MAX_UNREAD_ROOMS: usize = 1000;

// ---- input helpers ----

fn bad(message: impl Into<String>) -> HttpError {
    ApiError::bad_request(message).into()
}

fn room_id(s: &str) -> Result<RoomId, HttpError> {
    RoomId::new(s).map_err(|e| bad(e.to_string()))
}

fn user_id(s: &str) -> Result<UserId, HttpError> {
    UserId::new(s).map_err(|e| bad(e.to_string()))
}

fn seq_of(s: &str) -> Result<u64, HttpError> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad("seq must be a positive integer")),
    }
}

/// A JSON body, after the key was checked: too big is `413 too_large`, anything else that is not
/// the type `400 bad_request`. An empty body is `T::default()` when `empty` is given.
fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    empty: Option<T>,
) -> Result<T, HttpError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::from(ApiError::new(
                ErrorCode::TooLarge,
                "the request body is too large",
            ))
        } else {
            bad("the request body could not be read")
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace)
        && let Some(default) = empty
    {
        return Ok(default);
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, HttpError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| bad(format!("invalid query string: {}", e.body_text())))
}

fn list<T>(
    s: &str,
    max: usize,
    what: &str,
    parse: impl Fn(&str) -> Result<T, HttpError>,
) -> Result<Vec<T>, HttpError> {
    let items: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect();
    if items.len() > max {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("at most {max} {what} per call"),
        )
        .into());
    }
    items.into_iter().map(parse).collect()
}

/// Refuses posting as an identity the key does not own.
fn as_bot(key: &ApiKeyRecord, from: &UserId) -> Result<(), HttpError> {
    if key.may_post_as(from) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("this key may not post as {from}")).into())
    }
}

impl Api {
    async fn request<R: rpc::Request>(&self, req: &R) -> Result<R::Reply, HttpError> {
        Ok(rpc::call(&self.nats, req, self.config.request_timeout).await?)
    }

    /// A room's kind and members (`404 not_found` for an unknown room).
    async fn room(&self, room: &RoomId) -> Result<RoomInfo, HttpError> {
        self.request(&rooms::Members { room: room.clone() }).await
    }

    /// Whether `bot` is a member of `room`, from a cache of each bot's rooms kept
    /// `CHAT_API_MEMBERSHIP_TTL`: one request per bot per interval, not one per message. Not a
    /// member: `404` for an unknown room, `403` otherwise.
    async fn check_member(&self, bot: &UserId, room: &RoomId) -> Result<(), HttpError> {
        let cached = {
            let cache = self.bot_rooms.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(bot)
                .filter(|(at, _)| at.elapsed() < self.config.membership_ttl)
                .map(|(_, rooms)| rooms.contains(room))
        };
        let member = match cached {
            Some(m) => m,
            None => {
                let rooms: UserRooms = self
                    .request(&rooms::UserRoomsOf { user: bot.clone() })
                    .await?;
                let set: BTreeSet<RoomId> = rooms.rooms.into_iter().map(|m| m.room).collect();
                let member = set.contains(room);
                let mut cache = self.bot_rooms.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(bot.clone(), (Instant::now(), Arc::new(set)));
                member
            }
        };
        if member {
            return Ok(());
        }
        self.room(room).await?;
        Err(ApiError::forbidden(format!("{bot} is not a member of this room")).into())
    }

    /// Forgets what is cached of a bot's rooms (after this instance changed them).
    fn forget_rooms(&self, user: &UserId) {
        self.bot_rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }

    /// Checks and posts a lifecycle frame as `from` (the edge's rules and dedupe path).
    async fn post_frame(
        &self,
        key: &ApiKeyRecord,
        from: UserId,
        frame: ClientFrame,
    ) -> Result<(StatusCode, Posted), HttpError> {
        as_bot(key, &from)?;
        post::check_frame(&frame, self.config.max_body)?;
        let room = match &frame {
            ClientFrame::Send { room, .. }
            | ClientFrame::Edit { room, .. }
            | ClientFrame::Delete { room, .. }
            | ClientFrame::React { room, .. } => room.clone(),
            _ => return Err(ApiError::internal().into()),
        };
        self.check_member(&from, &room).await?;
        let Some(event) = post::event_of(frame, &from) else {
            return Err(ApiError::internal().into());
        };
        let posted = post::post(self.post_reader(), &self.js, &event).await?;
        let status = if posted.duplicate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((
            status,
            Posted {
                room,
                seq: posted.seq,
                ts: posted.ts,
                client_id: event.client_id,
                duplicate: posted.duplicate,
            },
        ))
    }
}

// ---- handlers ----

async fn post_message(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "post_message",
        Scope::MessagesWrite,
        target,
        |api, key| async move {
            let room = room_id(&room)?;
            let m: PostMessage = json_body(body, None)?;
            let frame = ClientFrame::Send {
                room,
                body: m.body,
                client_id: m.client_id,
                reply_to: m.reply_to,
                thread: m.thread,
            };
            api.post_frame(&key, m.from, frame).await
        },
    )
    .await
}

async fn edit_message(
    State(api): State<Api>,
    Path((room, seq)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "edit_message",
        Scope::MessagesWrite,
        target,
        |api, key| async move {
            let (room, seq) = (room_id(&room)?, seq_of(&seq)?);
            let m: EditMessage = json_body(body, None)?;
            let frame = ClientFrame::Edit {
                room,
                seq,
                body: m.body,
                client_id: m.client_id,
            };
            api.post_frame(&key, m.from, frame).await
        },
    )
    .await
}

async fn delete_message(
    State(api): State<Api>,
    Path((room, seq)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "delete_message",
        Scope::MessagesWrite,
        target,
        |api, key| async move {
            let (room, seq) = (room_id(&room)?, seq_of(&seq)?);
            let q: DeleteMessage = query(&uri)?;
            let frame = ClientFrame::Delete {
                room,
                seq,
                client_id: q.client_id,
            };
            api.post_frame(&key, q.from, frame).await
        },
    )
    .await
}

async fn react(
    State(api): State<Api>,
    Path((room, seq)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "react",
        Scope::MessagesWrite,
        target,
        |api, key| async move {
            let (room, seq) = (room_id(&room)?, seq_of(&seq)?);
            let m: React = json_body(body, None)?;
            let frame = ClientFrame::React {
                room,
                seq,
                emoji: m.emoji,
                on: m.on,
                client_id: m.client_id,
            };
            api.post_frame(&key, m.from, frame).await
        },
    )
    .await
}

async fn create_room(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The audit line names the room asked for, if the body names one.
    let target = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["room"].as_str().map(Target::room))
        .unwrap_or_default();
    call(
        &api,
        &headers,
        "create_room",
        Scope::RoomsWrite,
        target,
        |api, _| async move {
            let c: CreateRoom = json_body(body, None)?;
            if c.members.len() > MAX_CREATE_MEMBERS {
                return Err(ApiError::new(
                    ErrorCode::LimitExceeded,
                    format!("a room is created with at most {MAX_CREATE_MEMBERS} members"),
                )
                .into());
            }
            let info: RoomInfo = api
                .request(&rooms::CreateRoom {
                    room: c.room,
                    private: c.private,
                    members: c.members,
                    by: c.by,
                })
                .await?;
            for m in &info.members {
                api.forget_rooms(m);
            }
            Ok((StatusCode::CREATED, info))
        },
    )
    .await
}

async fn get_room(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "get_room",
        Scope::RoomsRead,
        target,
        |api, _| async move {
            let info = api.room(&room_id(&room)?).await?;
            Ok((StatusCode::OK, info))
        },
    )
    .await
}

async fn add_member(
    State(api): State<Api>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let target = Target::room_user(&room, &user);
    call(
        &api,
        &headers,
        "add_member",
        Scope::RoomsWrite,
        target,
        |api, _| async move {
            let (room, user) = (room_id(&room)?, user_id(&user)?);
            let info: RoomInfo = api
                .request(&rooms::AddMember {
                    room,
                    user: user.clone(),
                    by: None,
                })
                .await?;
            api.forget_rooms(&user);
            Ok((StatusCode::OK, info))
        },
    )
    .await
}

async fn remove_member(
    State(api): State<Api>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let target = Target::room_user(&room, &user);
    call(
        &api,
        &headers,
        "remove_member",
        Scope::RoomsWrite,
        target,
        |api, _| async move {
            let (room, user) = (room_id(&room)?, user_id(&user)?);
            let info: RoomInfo = api
                .request(&rooms::RemoveMember {
                    room,
                    user: user.clone(),
                })
                .await?;
            api.forget_rooms(&user);
            Ok((StatusCode::OK, info))
        },
    )
    .await
}

async fn history(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "history",
        Scope::HistoryRead,
        target,
        |api, _| async move {
            let room = room_id(&room)?;
            let q: HistoryQuery = query(&uri)?;
            if q.before.is_some() && q.after.is_some() {
                return Err(bad("give before or after, not both"));
            }
            if q.user.is_none() {
                // A trusted reader of a room that does not exist is told so.
                api.room(&room).await?;
            }
            let page: HistoryPage = api
                .request(&HistoryRequest {
                    room,
                    before: q.before,
                    after: q.after,
                    limit: q.limit,
                    thread: q.thread,
                    user: q.user,
                    replay: q.replay.unwrap_or(false),
                })
                .await?;
            Ok((StatusCode::OK, page))
        },
    )
    .await
}

async fn search(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    call(
        &api,
        &headers,
        "search",
        Scope::HistoryRead,
        Target::default(),
        |api, _| async move {
            let q: SearchQuery = query(&uri)?;
            post::check_query(&q.query)?;
            let reply: SearchReply = api
                .request(&SearchRequest {
                    query: q.query,
                    user: q.user,
                    room: q.room,
                    limit: q.limit,
                    before: q.before,
                })
                .await?;
            Ok((StatusCode::OK, reply))
        },
    )
    .await
}

async fn room_presence(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let target = Target::room(&room);
    call(
        &api,
        &headers,
        "room_presence",
        Scope::PresenceRead,
        target,
        |api, _| async move {
            let room = room_id(&room)?;
            let reply: PresenceReply = api.request(&PresenceRequest::Room { room }).await?;
            Ok((StatusCode::OK, reply))
        },
    )
    .await
}

async fn users_presence(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    call(
        &api,
        &headers,
        "users_presence",
        Scope::PresenceRead,
        Target::default(),
        |api, _| async move {
            let q: PresenceQuery = query(&uri)?;
            let users = list(&q.users, MAX_PRESENCE_USERS, "users", user_id)?;
            if users.is_empty() {
                return Err(bad("users must name at least one user"));
            }
            let reply: PresenceReply = api.request(&PresenceRequest::Users { users }).await?;
            Ok((StatusCode::OK, reply))
        },
    )
    .await
}

async fn disconnect(
    State(api): State<Api>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target::user(&user);
    call(
        &api,
        &headers,
        "disconnect",
        Scope::UsersDisconnect,
        target,
        |api, _| async move {
            let user = user_id(&user)?;
            let d: DisconnectUser = json_body(body, Some(DisconnectUser::default()))?;
            if chat_proto::has_control(&d.reason) {
                return Err(bad("reason must not contain control characters"));
            }
            let payload = serde_json::to_vec(&Disconnect {
                user: user.clone(),
                reason: d.reason,
            })
            .map_err(|_| HttpError::from(ApiError::internal()))?;
            let published = async {
                api.nats
                    .publish(subjects::user_disconnect(&user), payload.into())
                    .await?;
                api.nats.flush().await?;
                Ok::<_, async_nats::Error>(())
            };
            match tokio::time::timeout(api.config.request_timeout, published).await {
                Ok(Ok(())) => Ok((StatusCode::ACCEPTED, Disconnected { user })),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "disconnect not published");
                    Err(ApiError::unavailable().into())
                }
                Err(_) => Err(ApiError::unavailable().into()),
            }
        },
    )
    .await
}

async fn unread(
    State(api): State<Api>,
    Path(user): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let target = Target::user(&user);
    call(
        &api,
        &headers,
        "unread",
        Scope::UnreadRead,
        target,
        |api, _| async move {
            let user = user_id(&user)?;
            let q: UnreadQuery = query(&uri)?;
            let rooms = match q.rooms.as_deref() {
                Some(list_) => list(list_, MAX_UNREAD_ROOMS, "rooms", room_id)?,
                None => {
                    let rooms: UserRooms = api
                        .request(&rooms::UserRoomsOf { user: user.clone() })
                        .await?;
                    rooms.rooms.into_iter().map(|m| m.room).collect()
                }
            };
            let state: NotifyState = api
                .request(&NotifyStateRequest {
                    user,
                    rooms,
                    last_seqs: Vec::new(),
                })
                .await?;
            Ok((StatusCode::OK, state))
        },
    )
    .await
}

/// Checks that a JSON example decodes into one handler type.
pub type Decoder = fn(&serde_json::Value) -> Result<(), String>;

fn decodes<T: DeserializeOwned>(v: &serde_json::Value) -> Result<(), String> {
    serde_json::from_value::<T>(v.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What docs/openapi.json's examples must decode into, per operationId: the request's (body or
/// query string; `None`: the operation takes neither), the success response's.
pub fn example_types() -> HashMap<&'static str, (Option<Decoder>, Decoder)> {
    let mut m: HashMap<&'static str, (Option<Decoder>, Decoder)> = HashMap::new();
    m.insert(
        "createRoom",
        (Some(decodes::<CreateRoom>), decodes::<RoomInfo>),
    );
    m.insert("getRoom", (None, decodes::<RoomInfo>));
    m.insert("addMember", (None, decodes::<RoomInfo>));
    m.insert("removeMember", (None, decodes::<RoomInfo>));
    m.insert(
        "postMessage",
        (Some(decodes::<PostMessage>), decodes::<Posted>),
    );
    m.insert(
        "getHistory",
        (Some(decodes::<HistoryQuery>), decodes::<HistoryPage>),
    );
    m.insert(
        "editMessage",
        (Some(decodes::<EditMessage>), decodes::<Posted>),
    );
    m.insert(
        "deleteMessage",
        (Some(decodes::<DeleteMessage>), decodes::<Posted>),
    );
    m.insert("react", (Some(decodes::<React>), decodes::<Posted>));
    m.insert("roomPresence", (None, decodes::<PresenceReply>));
    m.insert(
        "search",
        (Some(decodes::<SearchQuery>), decodes::<SearchReply>),
    );
    m.insert(
        "usersPresence",
        (Some(decodes::<PresenceQuery>), decodes::<PresenceReply>),
    );
    m.insert(
        "disconnectUser",
        (Some(decodes::<DisconnectUser>), decodes::<Disconnected>),
    );
    m.insert(
        "getUnread",
        (Some(decodes::<UnreadQuery>), decodes::<NotifyState>),
    );
    m
}
