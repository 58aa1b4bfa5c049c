//! Configuration from the environment, through a map that tests can build by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use chat_bus::stream::StreamSettings;

/// A variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration variable {key}={value:?}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub problem: String,
}

/// The environment a service reads its configuration from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    /// A hand-made environment (tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Returns a copy with `key` set.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(key.into(), value.into());
        self
    }

    /// A set, non-empty variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_owned()
    }

    /// A parsed variable, `default` when unset.
    pub fn parse<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|e: T::Err| self.error(key, e.to_string())),
        }
    }

    /// A socket address such as `0.0.0.0:8080`.
    pub fn addr(&self, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let v = self.string(key, default);
        v.parse()
            .map_err(|_| self.error(key, "expected host:port, e.g. 0.0.0.0:8080".into()))
    }

    /// A duration: plain seconds, or a number with `ms`, `s`, `m`, `h` or `d`.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                self.error(
                    key,
                    "expected seconds or a number with ms, s, m, h or d (e.g. 30s, 10m, 7d)".into(),
                )
            }),
        }
    }

    /// A comma-separated list, empty entries dropped.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(_) => Err(self.error(key, "expected true or false".into())),
        }
    }

    fn error(&self, key: &str, problem: String) -> ConfigError {
        ConfigError {
            key: key.to_owned(),
            value: self.vars.get(key).cloned().unwrap_or_default(),
            problem,
        }
    }

    /// The settings of the `CHAT` stream: `CHAT_STREAM_MAX_AGE` (7d) and `CHAT_STREAM_REPLICAS` (1).
    pub fn stream_settings(&self) -> Result<StreamSettings, ConfigError> {
        let defaults = StreamSettings::default();
        let max_age = self.duration("CHAT_STREAM_MAX_AGE", defaults.max_age)?;
        if max_age < Duration::from_secs(1) {
            return Err(self.error("CHAT_STREAM_MAX_AGE", "must be at least 1s".into()));
        }
        let replicas = self.parse("CHAT_STREAM_REPLICAS", defaults.replicas)?;
        if !(1..=5).contains(&replicas) {
            return Err(self.error("CHAT_STREAM_REPLICAS", "must be 1 to 5".into()));
        }
        Ok(StreamSettings { max_age, replicas })
    }
}

/// Parses `90`, `500ms`, `30s`, `10m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("7w"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn env_reports_bad_values_by_name() {
        let env = Env::from_pairs([("CHAT_MAX_BODY", "lots"), ("X", "a, b,,c")]);
        let err = env.parse::<usize>("CHAT_MAX_BODY", 4000).unwrap_err();
        assert!(err.to_string().contains("CHAT_MAX_BODY"));
        assert_eq!(env.parse::<usize>("UNSET", 7).unwrap(), 7);
        assert_eq!(env.list("X"), vec!["a", "b", "c"]);
        let s = Env::from_pairs([("CHAT_STREAM_MAX_AGE", "30s")])
            .stream_settings()
            .unwrap();
        assert_eq!(s.max_age, Duration::from_secs(30));
    }
}
