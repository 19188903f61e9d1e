//! The HTTP probe against a real listener on 127.0.0.1.

use super::*;
use tokio::net::TcpListener;

/// Serves `answers` (raw response heads) to successive connections; returns the URL base.
async fn server(answers: Vec<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for answer in answers {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_status_line_is_read() {
    let base = server(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.0 503 Service Unavailable\r\n\r\n",
        "garbage\r\n\r\n",
    ])
    .await;
    assert_eq!(
        http_status(&format!("{base}/health")).await.expect("200"),
        200
    );
    assert_eq!(
        http_status(&format!("{base}/health?x=1"))
            .await
            .expect("503"),
        503
    );
    let err = http_status(&base).await.expect_err("not http");
    assert!(err.to_string().contains("not an HTTP response"), "{err}");
}

#[tokio::test]
async fn the_http_prober_compares_the_status_and_reports_refusals() {
    let base = server(vec![
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\n\r\n",
    ])
    .await;
    let mut p = HttpProber {
        url: format!("{base}/"),
        expect_status: 204,
        timeout: Duration::from_secs(5),
    };
    let first = p.check().await;
    assert!(first.ok, "{first:?}");
    let second = p.check().await;
    assert!(!second.ok);
    assert!(
        second.detail.contains("status 200 (expected 204)"),
        "{second:?}"
    );
    // Nothing listens there any more after the server task ended its two answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed = format!("http://{}/", listener.local_addr().expect("addr"));
    drop(listener);
    let mut p = HttpProber {
        url: closed,
        expect_status: 200,
        timeout: Duration::from_secs(5),
    };
    let refused = p.check().await;
    assert!(!refused.ok);
    assert!(
        refused.detail.contains("GET http://127.0.0.1:"),
        "{refused:?}"
    );
}
