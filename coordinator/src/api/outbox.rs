//! Server streams (Attach, WatchRun, FollowLogs) with a bound on the messages queued for one
//! client. A client that stops reading would otherwise pin a task and its queue forever; once
//! the queue has been full for the stall timeout the stream ends with RESOURCE_EXHAUSTED
//! naming the limit, ahead of whatever is still queued.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::Status;

/// Bounds of one server stream (`--max-stream-inflight`, `--stream-stall-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct StreamBounds {
    /// Messages queued for the client at most.
    pub inflight: usize,
    /// How long the queue may stay full before the stream is ended.
    pub stall: Duration,
}

/// Why a message was not queued: the stream is over either way.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client went away.
    Gone,
    /// The client left the queue full for the stall timeout; it was told why.
    Stalled,
}

/// The sending half, held by the task producing the stream.
pub struct Outbox<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    abort: Arc<Mutex<Option<oneshot::Sender<Status>>>>,
    bounds: StreamBounds,
}

/// The receiving half, handed to tonic as the response stream.
pub struct OutStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    abort: Option<oneshot::Receiver<Status>>,
}

pub fn outbox<T>(bounds: StreamBounds) -> (Outbox<T>, OutStream<T>) {
    let (tx, rx) = mpsc::channel(bounds.inflight.max(1));
    let (abort_tx, abort_rx) = oneshot::channel();
    (
        Outbox {
            tx,
            abort: Arc::new(Mutex::new(Some(abort_tx))),
            bounds,
        },
        OutStream {
            rx,
            abort: Some(abort_rx),
        },
    )
}

impl<T> Outbox<T> {
    /// Queues `item`, waiting while the queue is full, at most the stall timeout.
    pub async fn send(&self, item: Result<T, Status>) -> Result<(), Closed> {
        match tokio::time::timeout(self.bounds.stall, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closed::Gone),
            Err(_) => {
                let status = Status::resource_exhausted(format!(
                    "stream ended: the client left {} messages unread for {:?} \
                     (limit --max-stream-inflight {}, --stream-stall-timeout {:?})",
                    self.bounds.inflight,
                    self.bounds.stall,
                    self.bounds.inflight,
                    self.bounds.stall
                ));
                tracing::warn!(
                    limit = self.bounds.inflight,
                    "client stopped reading; stream ended"
                );
                if let Some(tx) = self.abort.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(status);
                }
                Err(Closed::Stalled)
            }
        }
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl<T> Stream for OutStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    // Ends the stream after the error: nothing queued behind it is sent.
                    self.abort = None;
                    self.rx.close();
                    while self.rx.try_recv().is_ok() {}
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn bounds(inflight: usize, stall_ms: u64) -> StreamBounds {
        StreamBounds {
            inflight,
            stall: Duration::from_millis(stall_ms),
        }
    }

    #[tokio::test]
    async fn a_reading_client_gets_every_message_in_order() {
        let (tx, mut rx) = outbox::<u32>(bounds(2, 1000));
        let producer = tokio::spawn(async move {
            for i in 0..10 {
                tx.send(Ok(i)).await.expect("client reads");
            }
        });
        let mut got = Vec::new();
        while let Some(item) = rx.next().await {
            got.push(item.expect("no error"));
        }
        producer.await.expect("producer");
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stalled_client_is_told_the_limit_before_the_queued_messages() {
        let (tx, mut rx) = outbox::<u32>(bounds(3, 50));
        for i in 0..3 {
            tx.send(Ok(i)).await.expect("room in the queue");
        }
        assert_eq!(tx.send(Ok(3)).await, Err(Closed::Stalled));
        let first = rx.next().await.expect("an item");
        let err = first.expect_err("the stall error comes first");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("--max-stream-inflight 3"),
            "{}",
            err.message()
        );
        assert!(rx.next().await.is_none(), "nothing after the error");
        assert_eq!(tx.send(Ok(4)).await, Err(Closed::Gone));
    }

    #[tokio::test]
    async fn a_client_that_went_away_is_reported_gone() {
        let (tx, rx) = outbox::<u32>(bounds(1, 1000));
        drop(rx);
        assert_eq!(tx.send(Ok(1)).await, Err(Closed::Gone));
        tx.closed().await;
    }
}
