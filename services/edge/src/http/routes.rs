//! The routes of the client listener, and the security headers of every response.

use axum::Router;
use axum::http::header;
use axum::response::Response;
use axum::routing::{get, post};

use super::{dev_login, upgrade};
use crate::Edge;

/// The HTTP routes of the client listener.
pub fn router(edge: Edge) -> Router {
    let mut app = Router::new().route("/ws", get(upgrade::ws_upgrade));
    if edge.config.dev_login {
        app = app.route("/dev/token", post(dev_login::dev_token));
    }
    let web = edge.config.web_dir.clone();
    if web.join("index.html").exists() {
        app = app.fallback_service(tower_http::services::ServeDir::new(web));
    }
    app.layer(axum::middleware::map_response(security_headers))
        .with_state(edge)
}

/// The web client's Content-Security-Policy: scripts, styles and connections to this origin
/// only (`connect-src 'self'` covers `ws:`/`wss:` to the same host), never framed.
pub const WEB_CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
    style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Security headers on every response of the client listener (issue 15 item 6): a CSP that
/// lets the web app talk only to its own origin — a `<meta>` CSP cannot set `frame-ancestors`,
/// and a page that can be made to connect elsewhere hands its token over — plus `nosniff` and
/// no `Referer` (the app's URL is nobody else's business).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(WEB_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    res
}
