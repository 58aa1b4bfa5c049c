//! `auth` after `hello` (protocol.md#ws): a refreshed token, for the same user, moves the
//! session's expiry (the session closes with 4001 when its token expires).

use chat_bus::api::ApiError;
use chat_proto::ErrorCode;

use crate::auth::AuthError;
use crate::session::{Session, Socket};

impl<S: Socket> Session<S> {
    pub(crate) async fn on_auth(&mut self, token: String) -> Result<(), ApiError> {
        match self.edge.auth.verify(&token).await {
            Ok(id) if id.user == self.handle.user => {
                self.exp = id.exp;
                self.expiry_changed = true;
                Ok(())
            }
            Ok(_) => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "a refreshed token must be for the same user",
            )),
            Err(AuthError::Expired) => Err(ApiError::new(ErrorCode::TokenExpired, "token expired")),
            Err(AuthError::Invalid) => Err(ApiError::new(ErrorCode::Unauthorized, "invalid token")),
        }
    }
}
