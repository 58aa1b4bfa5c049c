//! Waiting for something to happen instead of sleeping for it: [`eventually`] asks again until
//! the answer is "done", and fails naming what it waited for and the last answer it got.

use std::fmt::Debug;
use std::time::Duration;

/// An answer of [`eventually`]'s probe: done (with a value), or not yet (with what was seen).
pub trait Probe {
    type Output;
    /// `Ok` when done; otherwise what was seen, for the failure message.
    fn done(self) -> Result<Self::Output, String>;
}

impl Probe for bool {
    type Output = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Probe for Option<T> {
    type Output = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Debug> Probe for Result<T, E> {
    type Output = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Asks `probe` until it answers done (`true`, `Some`, `Ok`) and returns its value. It asks again
/// after 10 ms, then less and less often (at most every 100 ms), so a cheap probe notices soon and
/// a costly one does not load the machine. Panics after `within`, naming `what` (say what is
/// awaited: "chat-api knows the key") and the probe's last answer.
pub async fn eventually<P: Probe>(
    what: &str,
    within: Duration,
    probe: impl AsyncFnMut() -> P,
) -> P::Output {
    try_eventually(what, within, probe)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`eventually`] for code that reports failure instead of panicking (the testkit's own start
/// of servers): the error is the message [`eventually`] would panic with.
pub async fn try_eventually<P: Probe>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> Result<P::Output, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match probe().await.done() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(format!(
                "timed out after {within:?} waiting until {what} (last answer: {last})"
            ));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_done() {
        let mut n = 0;
        let v = eventually("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            let now = n;
            async move { (now >= 3).then_some(now) }
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until the impossible (last answer: \"nope\")")]
    async fn names_what_it_awaited_and_the_last_answer() {
        eventually("the impossible", Duration::from_millis(50), || async {
            Err::<(), _>("nope")
        })
        .await;
    }
}
