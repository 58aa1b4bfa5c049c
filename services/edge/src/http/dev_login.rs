//! Development sign-in (`CHAT_DEV_LOGIN`): `POST /dev/token` mints a one-hour token for any valid
//! user id, signed with the edge's HS256 secret. Never on in production.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_proto::UserId;
use serde::Deserialize;

use crate::Edge;

#[derive(Deserialize)]
pub(super) struct DevTokenRequest {
    user: String,
}

/// Development sign-in: mints a one-hour token for any valid user id. Off unless `CHAT_DEV_LOGIN`.
pub(super) async fn dev_token(
    State(edge): State<Edge>,
    body: axum::Json<DevTokenRequest>,
) -> Response {
    let Ok(user) = UserId::new(body.0.user) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid user id"})),
        )
            .into_response();
    };
    match edge.auth.mint(&user, 3600) {
        Some(token) => {
            axum::Json(serde_json::json!({"token": token, "user": user, "expires_in": 3600}))
                .into_response()
        }
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
