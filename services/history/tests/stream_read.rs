//! The stream reader against a real nats-server: forward batches and backward reads (bisection
//! over entry counts) return exactly the entries a model of the stream says, for rooms that
//! share the stream's seqs unevenly.

use async_nats::jetstream;
use chat_history::stream_read::StreamReader;
use std::time::Duration;

#[tokio::test]
async fn backward_and_forward_reads_match_the_log() {
    let nats = chat_testkit::NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    chat_bus::stream::ensure_chat_stream(&js, &Default::default())
        .await
        .unwrap();
    // Room a gets every 7th entry, then a burst; room b the rest.
    let mut a = Vec::new();
    for i in 0..400u64 {
        let room = if i % 7 == 0 || i >= 360 { "a" } else { "b" };
        let seq = js
            .publish(format!("chat.room.{room}.msg"), format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
        if room == "a" {
            a.push(seq);
        }
    }
    let reader = StreamReader::new(client, Duration::from_secs(5));
    let subject = "chat.room.a.msg";
    for (lo, before, n) in [
        (0, None, 1),
        (0, None, 10),
        (0, None, 41),
        (0, None, 500),
        (0, Some(300), 5),
        (0, Some(300), 1),
        (100, Some(300), 200),
        (100, Some(300), 3),
        (0, Some(1), 5),
        (0, Some(2), 5),
        (399, None, 3),
        (400, None, 3),
    ] {
        let (got, more) = reader.backward(subject, lo, before, n).await.unwrap();
        let got: Vec<u64> = got.iter().map(|e| e.seq).collect();
        let range: Vec<u64> = a
            .iter()
            .copied()
            .filter(|&s| s > lo && before.is_none_or(|b| s < b))
            .collect();
        let want = range[range.len().saturating_sub(n)..].to_vec();
        assert_eq!(got, want, "backward lo {lo} before {before:?} n {n}");
        assert_eq!(
            more,
            range.len() > n,
            "more: lo {lo} before {before:?} n {n}"
        );
    }
    for (from, n) in [(1, 5), (100, 50), (390, 100), (401, 3)] {
        let b = reader.batch(subject, from, n).await.unwrap();
        let got: Vec<u64> = b.entries.iter().map(|e| e.seq).collect();
        let range: Vec<u64> = a.iter().copied().filter(|&s| s >= from).collect();
        assert_eq!(
            got,
            range[..n.min(range.len())].to_vec(),
            "batch from {from}"
        );
        assert_eq!(
            b.pending as usize,
            range.len().saturating_sub(n),
            "pending from {from}"
        );
    }
    assert_eq!(reader.last_seq(subject).await.unwrap(), *a.last().unwrap());
    assert_eq!(reader.last_seq("chat.room.none.msg").await.unwrap(), 0);
}
