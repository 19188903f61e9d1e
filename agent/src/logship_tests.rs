//! Log shipper tests against the in-process fake coordinator.

use super::*;
use crate::test_support::FakeApi;

const LIMIT: Duration = Duration::from_secs(20);

fn key(stage: &str) -> AttemptKey {
    AttemptKey {
        run_id: "r1".into(),
        stage: stage.into(),
        attempt: 1,
        fencing_term: 0,
    }
}

fn small_config() -> LogConfig {
    LogConfig {
        chunk_bytes: 1024,
        batch_bytes: 2048,
        batch_chunks: 3,
        flush_interval: Duration::from_millis(20),
        max_buffered: 1 << 20,
        queue: 8,
    }
}

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ salt).collect()
}

fn start(api: &Arc<FakeApi>, config: LogConfig) -> (LogHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let (handle, _task) = spawn(api.clone(), config, stop.clone());
    (handle, stop)
}

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("did not finish in time")
}

fn assert_contiguous(chunks: &[LogChunk]) {
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.seq, i as u64, "seq numbers start at 0 without gaps");
    }
}

#[tokio::test]
async fn chunks_are_cut_at_the_size_limit_numbered_and_batched() {
    let api = Arc::new(FakeApi::default());
    let (logs, _stop) = start(&api, small_config());
    let (a, b) = (key("a"), key("b"));
    let log_a = logs
        .open(a.clone(), AttemptControl::new())
        .await
        .expect("open");
    let log_b = logs
        .open(b.clone(), AttemptControl::new())
        .await
        .expect("open");
    let (first, second, other) = (pattern(5000, 0), pattern(100, 1), pattern(3000, 2));
    log_a.write(first.clone()).await.expect("write");
    log_b.write(other.clone()).await.expect("write");
    log_a.write(second.clone()).await.expect("write");
    bounded(log_a.finish()).await.expect("a acknowledged");
    bounded(log_b.finish()).await.expect("b acknowledged");

    let chunks = api.chunks(&a);
    assert_contiguous(&chunks);
    assert!(
        chunks
            .iter()
            .all(|c| c.data.len() <= 1024 && !c.data.is_empty())
    );
    assert!(
        chunks[..4].iter().all(|c| c.data.len() == 1024),
        "full chunks are cut as soon as the data is there"
    );
    let data: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(data, [first, second].concat());

    let chunks_b = api.chunks(&b);
    assert_contiguous(&chunks_b);
    let data_b: Vec<u8> = chunks_b.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(data_b, other);

    for push in api.pushes() {
        let bytes: usize = push.iter().map(|c| c.data.len()).sum();
        assert!(
            push.len() == 1 || bytes <= 2048,
            "a batch stays within batch_bytes"
        );
        assert!(push.len() <= 3, "a batch stays within batch_chunks");
        assert!(!push.is_empty());
    }
}

#[tokio::test]
async fn a_partial_chunk_is_flushed_after_the_interval() {
    let api = Arc::new(FakeApi::default());
    let (logs, _stop) = start(&api, small_config());
    let k = key("a");
    let log = logs
        .open(k.clone(), AttemptControl::new())
        .await
        .expect("open");
    log.write(b"hello\n".to_vec()).await.expect("write");
    // No finish, no size trigger: only the timer can send it.
    bounded(async {
        while api.chunks(&k).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(api.log_text(&k), "hello\n");
}

#[tokio::test]
async fn unacknowledged_chunks_are_resent_until_acknowledged() {
    let api = Arc::new(FakeApi::default());
    api.fail_pushes(2);
    api.accept_per_push(1);
    let (logs, _stop) = start(&api, small_config());
    let k = key("a");
    let log = logs
        .open(k.clone(), AttemptControl::new())
        .await
        .expect("open");
    let input = pattern(3500, 7);
    log.write(input.clone()).await.expect("write");
    bounded(log.finish())
        .await
        .expect("acknowledged in the end");

    // finish() returned only once everything was durable.
    let chunks = api.chunks(&k);
    assert_contiguous(&chunks);
    assert_eq!(chunks.len(), 4);
    let data: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(data, input);

    let pushes = api.pushes();
    let sent = |seq: u64| {
        pushes
            .iter()
            .filter(|p| p.iter().any(|c| c.seq == seq))
            .count()
    };
    assert!(sent(0) >= 3, "seq 0 sent twice into errors, then again");
    assert!(
        sent(1) >= 2,
        "seq 1 was not acked the first time and was resent"
    );
    for push in &pushes {
        let seqs: Vec<u64> = push.iter().map(|c| c.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in seq order: {seqs:?}"
        );
    }
}

#[tokio::test]
async fn a_stale_ack_drops_the_log_and_cancels_the_attempt() {
    let api = Arc::new(FakeApi::default());
    let (logs, _stop) = start(&api, small_config());
    let k = key("a");
    api.mark_stale(&k);
    let control = AttemptControl::new();
    let log = logs.open(k.clone(), control.clone()).await.expect("open");
    log.write(pattern(3000, 0)).await.expect("write");
    bounded(control.token().cancelled()).await;
    assert_eq!(control.reason(), Some(&CancelReason::Stale));
    assert_eq!(bounded(log.finish()).await, Err(LogError::Stale));
    assert!(api.chunks(&k).is_empty());
}

#[tokio::test]
async fn writers_wait_while_the_buffer_is_full() {
    let api = Arc::new(FakeApi::default());
    api.fail_pushes(usize::MAX);
    let config = LogConfig {
        max_buffered: 2048,
        queue: 1,
        ..small_config()
    };
    let (logs, _stop) = start(&api, config);
    let k = key("a");
    let log = logs
        .open(k.clone(), AttemptControl::new())
        .await
        .expect("open");
    let mut blocked = false;
    for _ in 0..8 {
        let write = log.write(pattern(1024, 0));
        if tokio::time::timeout(Duration::from_millis(300), write)
            .await
            .is_err()
        {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the bounded queue pushes back on writers");
    api.fail_pushes(0);
    log.write(pattern(10, 0)).await.expect("accepted again");
    bounded(log.finish()).await.expect("everything delivered");
    let chunks = api.chunks(&k);
    assert_contiguous(&chunks);
}

#[tokio::test]
async fn finish_without_output_resolves_at_once() {
    let api = Arc::new(FakeApi::default());
    let (logs, _stop) = start(&api, small_config());
    let log = logs
        .open(key("quiet"), AttemptControl::new())
        .await
        .expect("open");
    bounded(log.finish()).await.expect("nothing to acknowledge");
    assert!(api.pushes().is_empty());
}

#[tokio::test]
async fn secret_values_are_masked_even_when_split_across_writes_and_chunks() {
    let api = Arc::new(FakeApi::default());
    let (logs, _stop) = start(&api, small_config());
    let k = key("secret");
    let mut log = logs
        .open(k.clone(), AttemptControl::new())
        .await
        .expect("open");
    log.mask(vec![b"hunter2-value".to_vec()]);
    // 1020 bytes, then a value whose first half would end the first 1024-byte chunk.
    let filler = vec![b'x'; 1020];
    log.write(filler.clone()).await.expect("write");
    log.write(b"hunter2-".to_vec()).await.expect("write");
    log.write(b"value end\n".to_vec()).await.expect("write");
    log.note("saw hunter2-value").await;
    // A prefix at the very end is released, unmasked, by finish.
    log.write(b"hunter".to_vec()).await.expect("write");
    bounded(log.finish()).await.expect("acknowledged");
    let data: Vec<u8> = api
        .chunks(&k)
        .iter()
        .flat_map(|c| {
            cd_common::logcodec::decode(&c.data, c.encoding, usize::MAX).expect("decodes")
        })
        .collect();
    let mut expected = filler;
    expected.extend_from_slice(b"*** end\n[cd-agent] saw ***\nhunter");
    assert_eq!(
        String::from_utf8_lossy(&data),
        String::from_utf8_lossy(&expected)
    );
}
