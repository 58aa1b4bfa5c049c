//! The command line: positionals (the command and its operands) and `--flags`, anywhere, as
//! `--flag value` or `--flag=value`. No parser crate: the grammar is small and this keeps the
//! build light, as `chat` (clients/cli) does.

use std::collections::HashMap;

use crate::UsageError;

/// Flags that take no value.
const SWITCHES: &[&str] = &["json", "help", "all"];
/// Flags that may be given several times (or once with commas).
const REPEATED: &[&str] = &["scope", "bot"];
/// Every flag chatctl knows, so that a typo is an error rather than silently ignored.
const KNOWN: &[&str] = &[
    "json",
    "help",
    "all",
    "scope",
    "bot",
    "name",
    "reason",
    "stream",
    "timeout",
    "nats",
    "nats-user",
    "nats-password",
    "nats-token",
    "nats-creds",
    "nats-tls-ca",
    "nats-tls-cert",
    "nats-tls-key",
];

/// A parsed command line.
#[derive(Debug, Default)]
pub struct Args {
    pub positionals: Vec<String>,
    flags: HashMap<String, Vec<String>>,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, UsageError> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                if arg == "-h" {
                    out.flags.insert("help".into(), vec![String::new()]);
                } else {
                    out.positionals.push(arg);
                }
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag.to_owned(), None),
            };
            if !KNOWN.contains(&name.as_str()) {
                return Err(UsageError(format!("unknown option --{name}")));
            }
            let value = if SWITCHES.contains(&name.as_str()) {
                if inline.is_some() {
                    return Err(UsageError(format!("--{name} takes no value")));
                }
                String::new()
            } else {
                match inline.or_else(|| it.next()) {
                    Some(v) => v,
                    None => return Err(UsageError(format!("--{name} needs a value"))),
                }
            };
            let values = out.flags.entry(name.clone()).or_default();
            let switch = SWITCHES.contains(&name.as_str());
            if !values.is_empty() && !switch && !REPEATED.contains(&name.as_str()) {
                return Err(UsageError(format!("--{name} given twice")));
            }
            values.push(value);
        }
        Ok(out)
    }

    pub fn switch(&self, name: &str) -> bool {
        self.flags.contains_key(name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Every value of a repeated flag, commas splitting values too (`--scope a,b --scope c`).
    pub fn values(&self, name: &str) -> Vec<String> {
        self.flags
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The command words (`dead-letters replay`) followed by exactly `n` operands.
    pub fn operands(&self, words: usize, n: usize) -> Result<&[String], UsageError> {
        let rest = self.positionals.get(words..).unwrap_or_default();
        if rest.len() != n {
            return Err(UsageError(format!(
                "`{}` takes {n} argument{}, got {}",
                self.positionals[..words.min(self.positionals.len())].join(" "),
                if n == 1 { "" } else { "s" },
                rest.len()
            )));
        }
        Ok(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, UsageError> {
        Args::parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn flags_anywhere_repeated_and_inline() {
        let a = parse("api-key create --name billing --scope messages:write,rooms:read --bot b1 --bot=b2 --json --nats nats://x:4222").unwrap();
        assert_eq!(a.positionals, ["api-key", "create"]);
        assert_eq!(a.value("name"), Some("billing"));
        assert_eq!(a.values("scope"), ["messages:write", "rooms:read"]);
        assert_eq!(a.values("bot"), ["b1", "b2"]);
        assert!(a.switch("json"));
        assert_eq!(a.value("nats"), Some("nats://x:4222"));
        assert_eq!(a.operands(2, 0).unwrap().len(), 0);
    }

    #[test]
    fn mistakes_are_usage_errors() {
        assert!(parse("consumers --jsn").is_err());
        assert!(parse("disconnect bob --reason").is_err());
        assert!(parse("room r --nats a --nats b").is_err());
        assert!(parse("consumers --json=1").is_err());
        let a = parse("dead-letters show").unwrap();
        assert!(a.operands(2, 1).is_err());
    }
}
