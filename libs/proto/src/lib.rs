//! The WebSocket protocol that client apps speak with `chat-edge` (protocol.md#ws).
//!
//! Serde types only: one internally tagged enum per direction ([`ClientFrame`], [`ServerFrame`]),
//! the validated identifiers of protocol.md#identities, the error codes and the close codes. Storage and NATS
//! crates may reuse the plain data types here (a message, a notification, a presence entry), but
//! nothing in this crate knows about storage or NATS.

mod frames;
mod ids;

pub use frames::*;
pub use ids::*;

/// WebSocket close codes of protocol.md#ws.
pub mod close {
    /// Missing, invalid or expired token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The connection's outbound queue overflowed: reconnect and recover.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client kept exceeding its frame rate.
    pub const RATE_ABUSE: u16 = 4029;
    /// A frame over `max_frame` bytes.
    pub const TOO_BIG: u16 = 1009;
    /// Server restart or drain: reconnect, possibly elsewhere.
    pub const RESTART: u16 = 1012;
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
}

/// Number of Unicode scalar values in `s`: the unit every length limit of the contract uses.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Does `s` hold a control character (Unicode category Cc)? protocol.md#ws-limits:
/// `client_id`, `ref`, `emoji` and `traceparent` hold none.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Does a message body hold a control character other than tab and newline (protocol.md#ws)?
pub fn body_has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\t' && c != '\n')
}

/// The first `n` characters of `s` (a notification's preview).
pub fn prefix_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_counts_scalar_values_not_bytes() {
        assert_eq!(prefix_chars("héllo", 2), "hé");
        assert_eq!(prefix_chars("ab", 5), "ab");
        assert_eq!(char_len("😀x"), 2);
    }

    #[test]
    fn control_characters_are_category_cc() {
        for c in ['\0', '\r', '\n', '\t', '\u{7f}', '\u{85}', '\u{9f}'] {
            assert!(has_control(&format!("a{c}b")), "{c:?}");
        }
        // Not Cc: format characters, separators, emoji.
        for s in ["", "plain", "\u{200b}\u{2028}", "😀 ok", "\u{a0}"] {
            assert!(!has_control(s), "{s:?}");
            assert!(!body_has_control(s), "{s:?}");
        }
        assert!(!body_has_control("line\n\tindented"));
        for bad in ["cr\r", "nul\0", "bell\u{7}", "del\u{7f}", "nel\u{85}"] {
            assert!(body_has_control(bad), "{bad:?}");
        }
    }
}
