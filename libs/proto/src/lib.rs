//! The WebSocket protocol that client apps speak with `chat-edge` (CONTRACT §2).
//!
//! Serde types only: one internally tagged enum per direction ([`ClientFrame`], [`ServerFrame`]),
//! the validated identifiers of CONTRACT §1, the error codes and the close codes. Storage and NATS
//! crates may reuse the plain data types here (a message, a notification, a presence entry), but
//! nothing in this crate knows about storage or NATS.

mod frames;
mod ids;

pub use frames::*;
pub use ids::*;

/// WebSocket close codes of CONTRACT §2.
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
}
